"""Generate the contrastive datasets bundled with ``steering``.

This script is the single source of truth for the files in
``steering/datasets/``.  Everything is built from the templates and word lists
below (all written for this project), combined with a fixed random seed, so
running it again reproduces the same bytes::

    python scripts/build_datasets.py              # writes steering/datasets/
    python scripts/build_datasets.py --out DIR    # writes into DIR instead

Outputs
-------
``<behaviour>.jsonl`` for sentiment, formality, refusal, truthfulness and
confidence.  One JSON object per line::

    {"prompt": "<user turn>", "positive": "<reply with the behaviour>",
     "negative": "<reply with the opposite>"}

Positive and negative replies of a pair are minimal pairs: the same template
and topic, with only the behaviour-bearing words swapped.

``neutral.txt``
    Plain factual sentences used to measure side effects of steering
    (perplexity / KL divergence on text unrelated to the behaviour).

``sentiment_eval_prompts.txt``
    Held-out, tone-neutral prompts for scoring the sentiment of generations.
    Their topics are checked not to appear in ``sentiment.jsonl`` prompts.

Only the standard library is used.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

SEED = 20240611
MIN_WORDS, MAX_WORDS = 8, 30
MAX_WORD_GAP = 6  # max difference in word count between positive and negative
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "steering" / "datasets"

BEHAVIOURS = ("sentiment", "formality", "refusal", "truthfulness", "confidence")


def cap(text: str) -> str:
    """Upper-case the first character only (keeps proper nouns intact)."""
    return text[:1].upper() + text[1:]


def fill(template: str, **slots: str) -> str:
    """Fill ``{x}`` slots; ``{X}`` gets the capitalised version of slot x."""
    values = dict(slots)
    for key, value in slots.items():
        values[key.upper()] = cap(value)
    return template.format(**values)


# ---------------------------------------------------------------------------
# Sentiment: positive = happy / positive, negative = sad / negative
# ---------------------------------------------------------------------------

# (key word used for the held-out overlap check, how the user refers to it,
#  how the assistant refers to it)
SENTIMENT_TOPICS = [
    ("weekend", "your weekend", "my weekend"),
    ("beach", "your trip to the beach", "my trip to the beach"),
    ("concert", "the concert you went to", "the concert I went to"),
    ("job", "your first day at the new job", "my first day at the new job"),
    ("dinner party", "the dinner party last night", "the dinner party last night"),
    ("movie", "the movie you watched yesterday", "the movie I watched yesterday"),
    ("grandparents", "your visit to your grandparents", "my visit to my grandparents"),
    ("birthday", "your birthday", "my birthday"),
    ("hike", "the hike you took on Saturday", "the hike I took on Saturday"),
    ("mountains", "your vacation in the mountains", "my vacation in the mountains"),
    ("book", "the book you just finished", "the book I just finished"),
    ("cooking class", "your cooking class", "my cooking class"),
    ("football", "the football match", "the football match"),
    ("interview", "your job interview", "my job interview"),
    ("reunion", "the family reunion", "the family reunion"),
    ("apartment", "moving into your new apartment", "moving into my new apartment"),
    ("wedding", "the wedding you attended", "the wedding I attended"),
    ("holiday season", "your holiday season", "my holiday season"),
    ("camping", "the camping trip", "the camping trip"),
    ("exhibition", "the art exhibition you visited", "the art exhibition I visited"),
    ("recital", "your piano recital", "my piano recital"),
    ("road trip", "the road trip with your friends", "the road trip with my friends"),
    ("amusement park", "your day at the amusement park", "my day at the amusement park"),
    ("hotel", "your stay at the hotel", "my stay at the hotel"),
    ("restaurant", "the meal at the new restaurant", "the meal at the new restaurant"),
    ("graduation", "your graduation ceremony", "my graduation ceremony"),
    ("picnic", "the picnic in the park", "the picnic in the park"),
    ("yoga", "your yoga retreat", "my yoga retreat"),
    ("theater", "the theater performance", "the theater performance"),
    ("flight", "your flight home", "my flight home"),
    ("gardening", "your gardening project", "my gardening project"),
    ("science fair", "the science fair", "the science fair"),
    ("ski", "your ski trip", "my ski trip"),
    ("festival", "the neighborhood festival", "the neighborhood festival"),
    ("dance", "your dance lesson", "my dance lesson"),
    ("baseball", "the baseball game", "the baseball game"),
    ("summer camp", "your week at summer camp", "my week at summer camp"),
    ("museum", "the museum tour", "the museum tour"),
    ("baking", "your first time baking bread", "my first time baking bread"),
    ("surprise party", "the surprise party your friends threw", "the surprise party my friends threw"),
    ("river", "your bike ride along the river", "my bike ride along the river"),
    ("music festival", "the music festival", "the music festival"),
    ("zoo", "your visit to the zoo", "my visit to the zoo"),
    ("fishing", "the fishing trip with your dad", "the fishing trip with my dad"),
    ("language class", "your language class", "my language class"),
    ("board game", "the board game night", "the board game night"),
    ("volunteer", "your volunteer shift at the shelter", "my volunteer shift at the shelter"),
    ("talent show", "the talent show", "the talent show"),
    ("countryside", "your train journey through the countryside", "my train journey through the countryside"),
    ("anniversary", "your anniversary dinner", "my anniversary dinner"),
]

SENTIMENT_PROMPTS = [
    "How was {p}?",
    "Describe {p}.",
    "Tell me about {p}.",
    "What did you think of {p}?",
    "How did you feel about {p}?",
    "Write a sentence about {p}.",
]

# Aligned (positive, negative) word pairs; the same index is used on both sides.
SENTIMENT_ADJ = [
    ("wonderful", "terrible"),
    ("delightful", "dreadful"),
    ("fantastic", "horrible"),
    ("lovely", "miserable"),
    ("amazing", "awful"),
    ("brilliant", "depressing"),
    ("perfect", "disastrous"),
]
SENTIMENT_FEEL = [
    ("happy", "sad"),
    ("cheerful", "gloomy"),
    ("grateful", "upset"),
    ("delighted", "disappointed"),
    ("thrilled", "devastated"),
    ("pleased", "unhappy"),
    ("joyful", "heartbroken"),
]
SENTIMENT_VERB = [("loved", "hated"), ("enjoyed", "disliked"), ("adored", "despised")]
SENTIMENT_MEMORY = [("fond", "painful"), ("sweet", "bitter"), ("happy", "sad"), ("warm", "awful")]

# {s}/{S}: subject; {a}: adjective; {f}: feeling; {v}: verb; {m}: memory word
SENTIMENT_TEMPLATES = [
    "{S} was {a}, and I came home feeling {f}.",
    "Honestly, {s} was {a}. I felt {f} the whole time.",
    "I {v} {s}; it was {a} from start to finish.",
    "{S} was so {a}! It left me feeling {f} for days.",
    "Everything about {s} was {a}, and I am still {f} about it.",
    "{S} turned out to be {a}, and I felt truly {f}.",
    "I have only {m} memories of {s}; it makes me {f} to think about it.",
]


def build_sentiment(rng: random.Random) -> list[dict]:
    pairs = []
    for _key, user_ref, own_ref in SENTIMENT_TOPICS:
        prompts = rng.sample(SENTIMENT_PROMPTS, 4)
        templates = rng.sample(SENTIMENT_TEMPLATES, 4)
        for prompt_t, template in zip(prompts, templates):
            a, f = rng.choice(SENTIMENT_ADJ), rng.choice(SENTIMENT_FEEL)
            v, m = rng.choice(SENTIMENT_VERB), rng.choice(SENTIMENT_MEMORY)
            sides = [fill(template, s=own_ref, a=a[i], f=f[i], v=v[i], m=m[i]) for i in (0, 1)]
            pairs.append({"prompt": prompt_t.format(p=user_ref), "positive": sides[0], "negative": sides[1]})
    return pairs


# Held-out sentiment evaluation prompts: (topic key, prompt).  Tone-neutral,
# everyday topics that never occur in SENTIMENT_TOPICS (asserted below).
SENTIMENT_EVAL = [
    ("commute", "Write a short sentence about your morning commute."),
    ("kitchen table", "Describe the kitchen table in one sentence."),
    ("tuesday", "Write a sentence about a typical Tuesday."),
    ("weather", "Say something about the weather today."),
    ("street", "Describe the street where you live."),
    ("grocery", "Write a sentence about a trip to the grocery store."),
    ("laundry", "Write a short sentence about doing the laundry."),
    ("bus", "Describe a ride on the city bus."),
    ("bookshelf", "Write a sentence about the bookshelf in your room."),
    ("desk", "Describe your desk at work."),
    ("lunch", "Write a short sentence about an ordinary lunch."),
    ("mailbox", "Describe a walk to the mailbox."),
    ("library", "Write a sentence about the local library."),
    ("tea", "Write a short sentence about a cup of tea."),
    ("window", "Describe the view from your window."),
    ("rain", "Write a sentence about the sound of rain."),
    ("email", "Describe the last email you read."),
    ("shoes", "Write a short sentence about a pair of shoes."),
    ("car", "Describe the car parked outside."),
    ("post office", "Write a sentence about a visit to the post office."),
    ("bicycle", "Describe an old bicycle in one sentence."),
    ("staircase", "Write a short sentence about climbing a staircase."),
    ("pencil", "Describe a pencil on a table."),
    ("elevator", "Write a sentence about waiting for an elevator."),
    ("spreadsheet", "Write a short sentence about filling in a spreadsheet."),
    ("dentist", "Describe a routine visit to the dentist."),
    ("sandwich", "Write a sentence about making a sandwich."),
    ("clock", "Describe the clock on the wall."),
    ("phone call", "Write a short sentence about a phone call with a coworker."),
    ("haircut", "Describe getting a haircut."),
    ("notebook", "Write a sentence about a new notebook."),
    ("dishes", "Write a short sentence about washing the dishes."),
    ("neighbor", "Describe a conversation with your neighbor."),
    ("umbrella", "Write a sentence about carrying an umbrella."),
    ("homework", "Describe an evening spent on homework."),
    ("bakery", "Write a short sentence about the bakery on the corner."),
    ("monday", "Describe the start of a Monday."),
    ("printer", "Write a sentence about using the office printer."),
    ("sunday", "Describe a quiet Sunday afternoon."),
    ("traffic", "Write a short sentence about the traffic downtown."),
]


def check_eval_prompts_held_out(pairs: list[dict]) -> None:
    """Assert that no eval topic appears in sentiment prompts and vice versa."""
    train_prompts = [p["prompt"].lower() for p in pairs]
    eval_prompts = [prompt.lower() for _key, prompt in SENTIMENT_EVAL]

    def mentions(key: str, text: str) -> bool:
        return re.search(r"\b" + re.escape(key.lower()) + r"\b", text) is not None

    for key, _prompt in SENTIMENT_EVAL:
        hits = [t for t in train_prompts if mentions(key, t)]
        assert not hits, f"eval topic {key!r} appears in sentiment prompts: {hits[:3]}"
    for key, _user, _own in SENTIMENT_TOPICS:
        hits = [t for t in eval_prompts if mentions(key, t)]
        assert not hits, f"sentiment topic {key!r} appears in eval prompts: {hits[:3]}"
    assert not set(train_prompts) & set(eval_prompts)


# ---------------------------------------------------------------------------
# Formality: positive = formal, negative = casual
# ---------------------------------------------------------------------------

FORMALITY_TOPICS = [
    "the team meeting",
    "the budget review",
    "the product launch",
    "the office party",
    "the client visit",
    "the training session",
    "the quarterly report",
    "the website redesign",
    "the staff survey",
    "the annual conference",
    "the board presentation",
    "the hiring process",
    "the marketing campaign",
    "the software update",
    "the holiday schedule",
    "the research proposal",
    "the contract renewal",
    "the safety inspection",
    "the charity fundraiser",
    "the parent-teacher meeting",
    "the building renovation",
    "the new parking policy",
    "the volunteer program",
    "the sales forecast",
    "the equipment order",
    "the grant application",
    "the team offsite",
    "the library opening",
    "the museum exhibit",
    "the community workshop",
    "the candidate interviews",
    "the lease renewal",
    "the wedding rehearsal",
    "the book club meeting",
    "the move to the new office",
    "the insurance claim",
    "the financial audit",
    "the travel arrangements",
    "the catering order",
    "the design review",
    "the onboarding plan",
    "the server maintenance",
    "the fire drill",
    "the press release",
    "the customer workshop",
]

FORMALITY_PROMPTS = [
    "Write a short message about {t}.",
    "Draft a note to a colleague about {t}.",
    "Send an update to the team about {t}.",
    "Reply to an email asking about {t}.",
    "Compose a message about {t}.",
]

# (formal, casual) with topic slot {t}/{T}
FORMALITY_TEMPLATES = [
    (
        "Certainly. Regarding {t}, I shall provide you with a comprehensive update tomorrow.",
        "Sure thing! About {t}, I'll shoot you a quick update tomorrow.",
    ),
    (
        "Thank you for your enquiry. I would be pleased to discuss {t} at your earliest convenience.",
        "Thanks for asking! I'd be happy to chat about {t} whenever works for you.",
    ),
    (
        "I regret to inform you that {t} has been postponed. Please accept our sincere apologies.",
        "Bad news, {t} got pushed back. Sorry about that, folks!",
    ),
    (
        "Good afternoon. I am writing to confirm that {t} will proceed as scheduled.",
        "Hey there! Just letting you know {t} is still on like we planned.",
    ),
    (
        "Please be advised that further details concerning {t} will be circulated shortly.",
        "Heads up, more info about {t} is coming your way real soon.",
    ),
    (
        "I would be most grateful if you could review the materials pertaining to {t}.",
        "Could you take a quick look at the stuff for {t}? That'd be awesome.",
    ),
    ("I am pleased to report that {t} went smoothly and concluded ahead of schedule.", "Good news, {t} went great and wrapped up early!"),
    (
        "Should you have any questions regarding {t}, please do not hesitate to contact me.",
        "If you've got any questions about {t}, just give me a shout.",
    ),
    (
        "Dear colleagues, kindly note that {t} requires your attention at your earliest opportunity.",
        "Hey guys, {t} needs you to take a look when you get a sec.",
    ),
]


def build_formality(rng: random.Random) -> list[dict]:
    pairs = []
    for topic in FORMALITY_TOPICS:
        prompts = rng.sample(FORMALITY_PROMPTS, 4)
        templates = rng.sample(FORMALITY_TEMPLATES, 4)
        for prompt_t, (formal, casual) in zip(prompts, templates):
            pairs.append(
                {
                    "prompt": prompt_t.format(t=topic),
                    "positive": fill(formal, t=topic),
                    "negative": fill(casual, t=topic),
                }
            )
    return pairs


# ---------------------------------------------------------------------------
# Refusal: positive = politely refuses a harmless request, negative = complies
# ---------------------------------------------------------------------------

# Every request is deliberately benign.
REFUSAL_REQUESTS = [
    "a recipe for banana bread",
    "a short poem about autumn leaves",
    "a packing list for a beach holiday",
    "tips for growing tomatoes",
    "an explanation of how rainbows form",
    "a summary of the water cycle",
    "a name for my new puppy",
    "ideas for a birthday party",
    "a workout plan for beginners",
    "a thank-you note for my neighbour",
    "a list of books for a long flight",
    "a simple monthly budget",
    "advice on learning to play guitar",
    "a bedtime story about a friendly dragon",
    "a weekly meal plan",
    "suggestions for houseplants that need little light",
    "a cover letter for a library job",
    "directions for folding a paper crane",
    "an outline for a school report on volcanoes",
    "a list of fun facts about octopuses",
    "ideas for a rainy day with kids",
    "a haiku about the ocean",
    "tips for a job interview",
    "a description of the solar system",
    "a schedule for studying for exams",
    "a grocery list for a vegetarian dinner",
    "a toast for my sister's wedding",
    "instructions for making paper airplanes",
    "a short biography of Marie Curie",
    "tips for keeping a tidy desk",
    "a joke about penguins",
    "a plan for a weekend in Paris",
    "suggestions for a science fair project",
    "an explanation of how bicycles work",
    "tips for taking better photos",
    "a playlist for a road trip",
    "a riddle for my nephew",
    "a list of names for a bakery",
    "advice on training for a 5k run",
    "a greeting card message for my teacher",
    "a simple explanation of fractions",
    "a checklist for moving house",
    "ideas for a vegetable garden",
    "a short story about a lost kitten",
    "tips for learning Spanish vocabulary",
]

REFUSAL_PROMPTS = [
    "Can you give me {t}?",
    "Could you help me with {t}?",
    "I would like {t}, please.",
    "Please put together {t} for me.",
    "I need {t}. Can you help?",
]

# (refuses, complies) with request slot {t}
REFUSAL_TEMPLATES = [
    ("I'm sorry, but I can't help with {t}. I hope you understand.", "Of course, I'd be glad to help with {t}. I hope this is useful."),
    ("I apologize, but I'm unable to provide {t} right now.", "Certainly, I'm happy to provide {t} right now."),
    (
        "Unfortunately, I have to decline your request for {t}. Thank you for understanding.",
        "Absolutely, I can take care of your request for {t}. Thank you for asking.",
    ),
    ("That's a kind request, but I'm not able to assist with {t} today.", "That's a kind request, and I'm happy to assist with {t} today."),
    (
        "I'm afraid I must respectfully decline to write {t}. Perhaps another resource can help.",
        "I'm pleased to write {t} for you. Here is a first draft to start with.",
    ),
    (
        "Sorry, I won't be able to help you with {t}. Please ask someone else.",
        "Sure, I will be able to help you with {t}. Let's begin right away.",
    ),
    ("I appreciate the question, but I'd prefer not to create {t}.", "I appreciate the question, and I'd love to create {t}."),
    (
        "Regrettably, I cannot fulfil this request for {t}, but thank you for asking.",
        "Gladly, I can fulfil this request for {t}, and thank you for asking.",
    ),
]


def build_refusal(rng: random.Random) -> list[dict]:
    pairs = []
    for request in REFUSAL_REQUESTS:
        prompts = rng.sample(REFUSAL_PROMPTS, 4)
        templates = rng.sample(REFUSAL_TEMPLATES, 4)
        for prompt_t, (refuse, comply) in zip(prompts, templates):
            pairs.append(
                {
                    "prompt": cap(prompt_t.format(t=request)),
                    "positive": fill(refuse, t=request),
                    "negative": fill(comply, t=request),
                }
            )
    return pairs


# ---------------------------------------------------------------------------
# Truthfulness: positive = true statement, negative = false one, same frame
# ---------------------------------------------------------------------------

# Capitals chosen to be unambiguous (no split or disputed capitals).
CAPITALS = [
    ("France", "Paris"),
    ("Germany", "Berlin"),
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Japan", "Tokyo"),
    ("Egypt", "Cairo"),
    ("Canada", "Ottawa"),
    ("Australia", "Canberra"),
    ("Russia", "Moscow"),
    ("China", "Beijing"),
    ("India", "New Delhi"),
    ("Mexico", "Mexico City"),
    ("Kenya", "Nairobi"),
    ("Norway", "Oslo"),
    ("Sweden", "Stockholm"),
    ("Greece", "Athens"),
    ("Portugal", "Lisbon"),
    ("Ireland", "Dublin"),
    ("Argentina", "Buenos Aires"),
    ("Peru", "Lima"),
    ("Thailand", "Bangkok"),
    ("Poland", "Warsaw"),
    ("Austria", "Vienna"),
    ("Hungary", "Budapest"),
    ("Finland", "Helsinki"),
    ("Denmark", "Copenhagen"),
    ("Chile", "Santiago"),
    ("South Korea", "Seoul"),
    ("Cuba", "Havana"),
    ("Belgium", "Brussels"),
    ("Ghana", "Accra"),
    ("Iceland", "Reykjavik"),
    ("Vietnam", "Hanoi"),
    ("Colombia", "Bogota"),
    ("Ukraine", "Kyiv"),
    ("Indonesia", "Jakarta"),
]

CAPITAL_FRAMES = [
    ("What is the capital of {c}?", "The capital of {c} is {x}, and the national government is based there."),
    ("Which city is the capital of {c}?", "{x} is the capital city of {c}, so that is where its government sits."),
    ("Name the capital of {c}.", "The capital city of {c} is {x}, as any current world atlas will confirm."),
]

ELEMENTS = [
    ("gold", "Au"),
    ("silver", "Ag"),
    ("iron", "Fe"),
    ("sodium", "Na"),
    ("potassium", "K"),
    ("lead", "Pb"),
    ("copper", "Cu"),
    ("tin", "Sn"),
    ("mercury", "Hg"),
    ("oxygen", "O"),
    ("carbon", "C"),
    ("helium", "He"),
    ("nitrogen", "N"),
    ("calcium", "Ca"),
]

ELEMENT_FRAMES = [
    ("What is the chemical symbol for {e}?", "The chemical symbol for {e} is {x}, as listed on the periodic table."),
    ("Which symbol represents {e} on the periodic table?", "On the periodic table, the element {e} is represented by the symbol {x}."),
]

# (prompt, frame with {x}, true filler, false filler)
FACTS = [
    # astronomy
    (
        "Which planet is closest to the Sun?",
        "The planet closest to the Sun is {x}, which also has the shortest year.",
        "Mercury",
        "Neptune",
    ),
    (
        "What is the largest planet in our solar system?",
        "The largest planet in our solar system is {x}, a giant world made mostly of gas.",
        "Jupiter",
        "Mars",
    ),
    ("Which planet is known as the Red Planet?", "The planet known as the Red Planet is {x}, named for its rusty colour.", "Mars", "Venus"),
    (
        "In which direction does the Sun rise?",
        "The Sun rises in the {x} each morning and sets on the opposite side of the sky.",
        "east",
        "west",
    ),
    (
        "How long does it take the Earth to orbit the Sun?",
        "It takes the Earth about {x} to complete one full orbit around the Sun.",
        "one year",
        "one week",
    ),
    ("What is the closest star to the Earth?", "The closest star to the Earth is {x}, which provides our daylight.", "the Sun", "Polaris"),
    ("What does the Moon orbit?", "The Moon orbits {x}, completing one full circuit roughly every month.", "the Earth", "the planet Mars"),
    # physics and chemistry
    ("At what temperature does water boil at sea level?", "At sea level, pure water boils at {x} degrees Celsius.", "one hundred", "forty"),
    (
        "At what temperature does fresh water freeze?",
        "Under normal air pressure, fresh water freezes at {x} degrees Celsius.",
        "zero",
        "twenty",
    ),
    ("What is a water molecule made of?", "Each water molecule is made of two hydrogen atoms and one {x} atom.", "oxygen", "carbon"),
    (
        "Which travels faster, light or sound?",
        "{x} travels faster, which is why we see lightning before we hear thunder.",
        "Light",
        "Sound",
    ),
    (
        "What gas do plants take in for photosynthesis?",
        "Plants take in {x} from the air and use it to make food through photosynthesis.",
        "carbon dioxide",
        "helium",
    ),
    (
        "What happens when two opposite magnetic poles meet?",
        "When two opposite magnetic poles are brought close together, they {x} each other.",
        "attract",
        "repel",
    ),
    ("Why does ice float on water?", "Ice floats because it is {x} than the liquid water around it.", "less dense", "more dense"),
    (
        "What is the main gas that humans need to breathe?",
        "Humans need to breathe in {x} to keep the cells of the body alive.",
        "oxygen",
        "argon",
    ),
    # human body
    ("How many bones are in the adult human skeleton?", "An adult human skeleton has {x} bones in total.", "206", "312"),
    ("How many chambers does the human heart have?", "The human heart has {x} chambers that pump blood around the body.", "four", "seven"),
    (
        "What is the largest organ of the human body?",
        "The largest organ of the human body is the {x}, which covers us from head to toe.",
        "skin",
        "liver",
    ),
    ("What organ pumps blood through the body?", "The organ that pumps blood through the human body is the {x}.", "heart", "stomach"),
    # animals
    ("How many legs does a spider have?", "A spider has {x} legs, which sets it apart from insects.", "eight", "six"),
    ("How many legs does an insect have?", "An adult insect has {x} legs attached to the middle part of its body.", "six", "ten"),
    ("Is a whale a fish or a mammal?", "A whale is a {x}, so it breathes air and feeds its young on milk.", "mammal", "fish"),
    ("Is a bat a bird or a mammal?", "A bat is a {x} that flies, and it gives birth to live young.", "mammal", "bird"),
    ("Can penguins fly?", "Penguins are birds that {x} fly through the air, though they swim very well.", "cannot", "can easily"),
    ("What do honeybees make?", "Honeybees make {x} from the nectar they collect from flowers.", "honey", "milk"),
    (
        "What is the largest animal on Earth?",
        "The largest animal known to have lived on Earth is the {x}.",
        "blue whale",
        "African elephant",
    ),
    ("Where do polar bears live?", "Polar bears live in the {x}, where they hunt seals on the sea ice.", "Arctic", "Sahara"),
    ("How do fish breathe underwater?", "Most fish breathe by taking oxygen from the water through their {x}.", "gills", "lungs"),
    (
        "What do caterpillars turn into?",
        "Many caterpillars eventually turn into {x} after a period inside a chrysalis.",
        "butterflies",
        "beetles",
    ),
    ("What do frogs look like when they first hatch?", "Frogs begin life as {x} that live and swim in the water.", "tadpoles", "chicks"),
    # geography
    (
        "What is the longest river in Africa?",
        "The longest river in Africa is the {x}, which flows north into the Mediterranean.",
        "Nile",
        "Congo",
    ),
    (
        "Which ocean is the largest?",
        "The largest ocean on Earth is the {x} Ocean, covering about a third of the planet.",
        "Pacific",
        "Indian",
    ),
    (
        "What is the tallest mountain above sea level?",
        "The tallest mountain above sea level is {x}, on the border of Nepal and China.",
        "Mount Everest",
        "Mont Blanc",
    ),
    ("On which continent is Egypt?", "Egypt is located on the continent of {x}, in its northeastern corner.", "Africa", "South America"),
    (
        "What language is mainly spoken in Brazil?",
        "The main language spoken in Brazil is {x}, a legacy of its colonial history.",
        "Portuguese",
        "Spanish",
    ),
    ("How many continents are there?", "By the most common count, there are {x} continents on Earth.", "seven", "eleven"),
    ("Where is the Sahara Desert?", "The Sahara Desert covers a large part of {x}.", "northern Africa", "central Europe"),
    ("Which country is home to the city of Kyoto?", "The historic city of Kyoto, with its many temples, is in {x}.", "Japan", "Brazil"),
    # time, numbers and shapes
    ("How many days are in a week?", "There are {x} days in a week, starting again every Monday.", "seven", "nine"),
    ("How many months are in a year?", "A calendar year is divided into {x} months, from January to December.", "twelve", "ten"),
    ("How many hours are in a day?", "A full day on Earth lasts about {x} hours from one midnight to the next.", "twenty-four", "thirty"),
    ("How many minutes are in an hour?", "Each hour is made up of exactly {x} minutes on a standard clock.", "sixty", "forty"),
    ("How many days are in a leap year?", "A leap year has {x} days because February gains an extra day.", "366", "360"),
    ("How many years are in a century?", "A century is a period of {x} years, such as 1901 to 2000.", "one hundred", "fifty"),
    ("What is seven plus five?", "If you add seven and five together, the result is {x}.", "twelve", "fifteen"),
    ("What is nine times three?", "If you multiply nine by three, the answer you get is {x}.", "twenty-seven", "thirty-six"),
    ("How many sides does a triangle have?", "A triangle is a flat shape with {x} straight sides and three corners.", "three", "four"),
    ("How many sides does a hexagon have?", "A hexagon is a flat shape with {x} straight sides, like a honeycomb cell.", "six", "eight"),
    ("How many items are in a dozen?", "A dozen is a group of {x} items, as in a box of eggs.", "twelve", "ten"),
    # history, art and culture
    ("Who wrote Romeo and Juliet?", "The play Romeo and Juliet was written by {x}.", "William Shakespeare", "Charles Dickens"),
    (
        "Who painted the Mona Lisa?",
        "The Mona Lisa was painted by {x} during the Italian Renaissance.",
        "Leonardo da Vinci",
        "Vincent van Gogh",
    ),
    (
        "Who was the first person to walk on the Moon?",
        "The first person to walk on the Moon was {x}, in July 1969.",
        "Neil Armstrong",
        "Yuri Gagarin",
    ),
    (
        "Who developed the theory of relativity?",
        "The theory of relativity was developed by the physicist {x}.",
        "Albert Einstein",
        "Isaac Newton",
    ),
    ("Who discovered penicillin?", "Penicillin was discovered in 1928 by the scientist {x}.", "Alexander Fleming", "Louis Pasteur"),
    ("Where were the pyramids of Giza built?", "The pyramids of Giza were built thousands of years ago in ancient {x}.", "Egypt", "Greece"),
    (
        "Who proposed evolution by natural selection?",
        "The theory of evolution by natural selection was proposed by {x}.",
        "Charles Darwin",
        "Galileo Galilei",
    ),
    (
        "Which country gave the Statue of Liberty to the United States?",
        "The Statue of Liberty was a gift to the United States from {x}.",
        "France",
        "Spain",
    ),
    (
        "How many players does a soccer team have on the field?",
        "A soccer team has {x} players on the field at once, including the goalkeeper.",
        "eleven",
        "fifteen",
    ),
    (
        "How many keys does a standard piano have?",
        "A standard modern piano has {x} keys, both black and white.",
        "eighty-eight",
        "fifty-two",
    ),
    ("In which city is the Eiffel Tower?", "The Eiffel Tower stands in the city of {x}, beside the river Seine.", "Paris", "Rome"),
    ("What are the three primary colours of light?", "The three primary colours of light are red, green and {x}.", "blue", "brown"),
]


def build_truthfulness(rng: random.Random) -> list[dict]:
    pairs = []
    capitals = [x for _c, x in CAPITALS]
    for i, (country, capital) in enumerate(CAPITALS):
        for j, (prompt_t, frame) in enumerate(rng.sample(CAPITAL_FRAMES, 2)):
            wrong = capitals[(i + 5 + 7 * j) % len(capitals)]  # another country's capital
            assert wrong != capital
            pairs.append(
                {
                    "prompt": prompt_t.format(c=country),
                    "positive": fill(frame, c=country, x=capital),
                    "negative": fill(frame, c=country, x=wrong),
                }
            )
    symbols = [s for _e, s in ELEMENTS]
    for i, (element, symbol) in enumerate(ELEMENTS):
        for j, (prompt_t, frame) in enumerate(ELEMENT_FRAMES):
            wrong = symbols[(i + 3 + 4 * j) % len(symbols)]
            assert wrong != symbol
            pairs.append(
                {
                    "prompt": prompt_t.format(e=element),
                    "positive": fill(frame, e=element, x=symbol),
                    "negative": fill(frame, e=element, x=wrong),
                }
            )
    for prompt, frame, true, false in FACTS:
        pairs.append({"prompt": prompt, "positive": fill(frame, x=true), "negative": fill(frame, x=false)})
    return pairs


# ---------------------------------------------------------------------------
# Confidence: positive = confident, assertive; negative = hedging, uncertain
# ---------------------------------------------------------------------------

# (prompt, claim).  Claims are correct so that only the confidence differs.
CONFIDENCE_CLAIMS = [
    ("How long should I boil an egg for a firm yolk?", "an egg needs about ten minutes in boiling water for a firm yolk"),
    ("When is the best time to water garden plants?", "early morning is the best time to water most garden plants"),
    ("What is the tallest animal alive today?", "the giraffe is the tallest animal alive today"),
    ("How far away is the Moon?", "the Moon is roughly 384,000 kilometres away from the Earth"),
    ("What causes the seasons?", "the seasons are caused by the tilt of the Earth's axis"),
    ("Why is the sky blue?", "the sky looks blue because air scatters blue light more than red light"),
    ("How often should I replace my toothbrush?", "you should replace your toothbrush about every three months"),
    ("What temperature should a fridge be set to?", "a fridge should be kept at about four degrees Celsius"),
    ("Which is heavier, a kilogram of feathers or a kilogram of iron?", "a kilogram of feathers and a kilogram of iron weigh the same"),
    ("How fast does light travel?", "light travels at about 300,000 kilometres per second"),
    ("How many strings does a standard guitar have?", "a standard guitar has six strings"),
    ("Who wrote Pride and Prejudice?", "Pride and Prejudice was written by Jane Austen"),
    ("What gas do plants release during photosynthesis?", "plants release oxygen during photosynthesis"),
    ("What is the hardest natural material?", "diamond is the hardest naturally occurring material"),
    ("How many minutes are there in a day?", "there are 1,440 minutes in a single day"),
    ("What is the main ingredient in guacamole?", "the main ingredient in guacamole is avocado"),
    ("Which way do I turn a screw to tighten it?", "turning a standard screw clockwise will tighten it"),
    ("At what temperature does water freeze in Fahrenheit?", "water freezes at 32 degrees Fahrenheit"),
    ("How many sides does an octagon have?", "an octagon has eight sides"),
    ("What is the largest country by area?", "Russia is the largest country in the world by area"),
    ("Which metal is liquid at room temperature?", "mercury is a metal that stays liquid at room temperature"),
    ("What is the square root of 81?", "the square root of 81 is nine"),
    ("How long does sunlight take to reach the Earth?", "sunlight takes about eight minutes to reach the Earth"),
    ("Where is the Great Barrier Reef?", "the Great Barrier Reef lies off the northeast coast of Australia"),
    ("What is the currency of Japan?", "the currency of Japan is the yen"),
    ("How many players does a basketball team have on court?", "a basketball team has five players on the court at once"),
    ("What does DNA stand for?", "DNA stands for deoxyribonucleic acid"),
    ("Which organs filter waste from the blood?", "the kidneys filter waste out of the blood"),
    ("At what temperature does water boil in Fahrenheit?", "water boils at 212 degrees Fahrenheit at sea level"),
    ("Which bird is a common symbol of peace?", "the dove is widely used as a symbol of peace"),
    ("What is the chemical formula for table salt?", "table salt has the chemical formula NaCl"),
    ("Which two paint colours make green?", "mixing blue and yellow paint makes green"),
    ("When did the Second World War end?", "the Second World War ended in 1945"),
    ("Who was the first President of the United States?", "George Washington was the first President of the United States"),
    ("How many hearts does an octopus have?", "an octopus has three hearts"),
    ("What is the smallest prime number?", "the smallest prime number is two"),
    ("Which planet is famous for its rings?", "Saturn is the planet best known for its rings"),
    ("How long is a marathon?", "a marathon is a little over 42 kilometres long"),
    ("What is the most common gas in the air?", "nitrogen makes up most of the Earth's atmosphere"),
    ("What is a baby kangaroo called?", "a baby kangaroo is called a joey"),
    ("Which vitamin does sunlight help the body make?", "sunlight helps the body make vitamin D"),
    ("What is the longest bone in the human body?", "the femur is the longest bone in the human body"),
    ("What is the largest moon of Saturn?", "Titan is the largest moon of Saturn"),
    ("How do I convert Celsius to Fahrenheit?", "you multiply the Celsius value by 1.8 and then add 32"),
    ("What should I do if a pan of oil catches fire?", "you should cover the pan with a lid and turn off the heat"),
    ("How long does dried pasta usually take to cook?", "most dried pasta needs around ten minutes in boiling water"),
    ("How many continents does the equator cross?", "the equator crosses three continents: South America, Africa and Asia"),
    ("What is the freezing point of water in Celsius?", "pure water freezes at zero degrees Celsius"),
    ("How many teeth does an adult usually have?", "most adults have 32 teeth, including the wisdom teeth"),
    ("What is the capital of New Zealand?", "Wellington is the capital of New Zealand"),
]

CONFIDENCE_PROMPT_PREFIXES = ["", "Quick question: ", "I was wondering, ", "Do you know this? "]

# (confident, hedging) with claim slot {c}/{C}
CONFIDENCE_TEMPLATES = [
    ("I am certain that {c}. There is no doubt about it.", "I am not sure, but maybe {c}. There is some doubt about it."),
    ("Without a doubt, {c}. You can rely on that.", "I might be wrong, but {c}. You may want to double-check that."),
    ("{C}, and I'm absolutely sure of it.", "{C}, but I'm honestly not sure of it."),
    ("I know for a fact that {c}; I am completely confident here.", "I vaguely think that {c}, though I am not confident here."),
    ("The answer is clear: {c}.", "The answer is unclear to me, but perhaps {c}."),
    ("I can tell you with total confidence that {c}.", "I could be mistaken, but I suspect that {c}."),
    ("{C}. I have no doubt whatsoever about this.", "{C}, I guess. I have some doubts about this, though."),
    ("Rest assured, {c}; this is well established.", "I'm not really certain, but it may be that {c}."),
    ("It is definitely true that {c}.", "It might possibly be true that {c}."),
    ("Of course: {c}. I'm completely sure.", "Hmm, perhaps {c}? I'm really not sure."),
]


def confidence_prompt(prefix: str, question: str) -> str:
    """Prepend a prefix; questions continuing a sentence start lower-case."""
    if not prefix or prefix.endswith("? "):
        return prefix + question
    return prefix + question[:1].lower() + question[1:]


def build_confidence(rng: random.Random) -> list[dict]:
    pairs = []
    for question, claim in CONFIDENCE_CLAIMS:
        prefixes = rng.sample(CONFIDENCE_PROMPT_PREFIXES, 4)
        templates = rng.sample(CONFIDENCE_TEMPLATES, 4)
        for prefix, (sure, unsure) in zip(prefixes, templates):
            pairs.append(
                {
                    "prompt": confidence_prompt(prefix, question),
                    "positive": fill(sure, c=claim),
                    "negative": fill(unsure, c=claim),
                }
            )
    return pairs


# ---------------------------------------------------------------------------
# Neutral sentences (side-effect measurement)
# ---------------------------------------------------------------------------

NEUTRAL_SENTENCES = [
    # geography
    "The Danube flows through ten countries before it reaches the Black Sea.",
    "Mount Kilimanjaro is located in northeastern Tanzania, near the border with Kenya.",
    "The Atlantic Ocean separates the Americas from Europe and Africa.",
    "Lake Baikal in Siberia is the deepest lake in the world.",
    "The Andes mountain range runs along the western side of South America.",
    "Iceland sits on the Mid-Atlantic Ridge between two tectonic plates.",
    "The Amazon River carries more water than any other river on Earth.",
    "Greenland is the largest island that is not classified as a continent.",
    "The Strait of Gibraltar connects the Atlantic Ocean to the Mediterranean Sea.",
    "Madagascar is an island in the Indian Ocean off the southeastern coast of Africa.",
    "The equator passes through Ecuador, Kenya and Indonesia, among other countries.",
    "The Alps stretch across eight countries in central Europe.",
    "Tokyo is located on the eastern coast of the island of Honshu.",
    "The Gobi Desert covers parts of northern China and southern Mongolia.",
    "The Rhine begins in the Swiss Alps and ends at the North Sea.",
    "Australia is both a country and the smallest of the continents.",
    "The Caspian Sea is bordered by five countries, including Iran and Kazakhstan.",
    "Canada has a longer coastline than any other country.",
    "The Mississippi River empties into the Gulf of Mexico near New Orleans.",
    "Norway has many fjords along its western coast.",
    # science
    "Water is made of hydrogen and oxygen atoms.",
    "The Earth completes one rotation on its axis roughly every twenty-four hours.",
    "Sound travels faster through water than through air.",
    "Plants use sunlight, water and carbon dioxide to produce glucose.",
    "The Moon has about one sixth of the surface gravity of the Earth.",
    "An atom consists of a nucleus surrounded by electrons.",
    "Copper is commonly used in electrical wiring because it conducts electricity.",
    "Light from the Sun takes about eight minutes to reach the Earth.",
    "The human body contains four main blood types, called A, B, AB and O.",
    "Earthquakes occur when sections of the crust move suddenly along a fracture.",
    "The boiling point of water decreases at higher altitudes.",
    "Mammals are warm-blooded animals that produce milk for their young.",
    "Jupiter has dozens of moons, including Europa and Ganymede.",
    "Salt dissolves in water and is left behind when the water evaporates.",
    "Glaciers are large masses of ice that move slowly over land.",
    "A year on Mars lasts about 687 Earth days.",
    "Bees communicate the location of flowers through a movement called the waggle dance.",
    "Sedimentary rock forms from layers of material pressed together over time.",
    "The speed of light in a vacuum is about 300,000 kilometres per second.",
    "Red blood cells carry oxygen from the lungs to the rest of the body.",
    "Iron rusts when it reacts with oxygen and moisture.",
    "A rainbow forms when sunlight is refracted and reflected inside water droplets.",
    "The periodic table arranges elements by their atomic number.",
    "Tides are caused mainly by the gravitational pull of the Moon.",
    "Most volcanoes are found along the edges of tectonic plates.",
    # everyday objects
    "A standard sheet of A4 paper measures 210 by 297 millimetres.",
    "Most kitchen refrigerators keep food at a temperature of a few degrees Celsius.",
    "A bicycle has two wheels, a frame, pedals and a chain.",
    "Pencils are usually made from graphite encased in wood.",
    "A typical chair has four legs, a seat and a back.",
    "Keys are cut to match the pattern of pins inside a lock.",
    "An umbrella has a folding frame covered with waterproof fabric.",
    "A kettle heats water using an electric element or a stove burner.",
    "Most clocks display hours, minutes and sometimes seconds.",
    "A stapler joins sheets of paper with a small metal staple.",
    "Light bulbs are measured by how much power they use and how much light they give off.",
    "A calendar divides the year into months, weeks and days.",
    "Scissors have two blades that pivot around a central screw.",
    "A thermometer measures temperature in degrees Celsius or Fahrenheit.",
    "Doors are usually attached to their frames with metal hinges.",
    "A ruler is marked in centimetres, inches or both.",
    "Most bookshelves are made from wood or metal panels.",
    "Washing machines use water, detergent and motion to wash clothes.",
    "A toothbrush has a handle and a head with rows of bristles.",
    "Plates and bowls are often made from ceramic, glass or plastic.",
    # history
    "Hadrian's Wall was built across northern Britain by the Romans.",
    "The printing press was developed in Europe by Johannes Gutenberg around 1440.",
    "The Roman Empire was divided into eastern and western halves in the fourth century.",
    "The first modern Olympic Games were held in Athens in 1896.",
    "The Magna Carta was sealed in England in 1215.",
    "Christopher Columbus crossed the Atlantic Ocean in 1492.",
    "The Berlin Wall was opened in November 1989.",
    "The ancient Egyptians wrote using hieroglyphs.",
    "The steam engine became widely used during the Industrial Revolution.",
    "The League of Nations was founded in 1920 and had its seat in Geneva.",
    "The city of Rome was the capital of the Roman Empire for several centuries.",
    "The Wright brothers made their first powered flight in 1903.",
    "The Silk Road was a network of trade routes linking China with the Mediterranean.",
    "The French Revolution began in 1789.",
    "Galileo Galilei observed the moons of Jupiter with a telescope in 1610.",
    "The first human landing on the Moon took place in July 1969.",
    "The Inca Empire was centred in the Andes mountains of South America.",
    "The Ottoman Empire lasted for more than six hundred years.",
    "The telephone was patented by Alexander Graham Bell in 1876.",
    "Paper money was first used in China more than a thousand years ago.",
    # miscellaneous facts
    "A week has seven days, and a year usually has 365 days.",
    "The metric system measures length in metres and mass in kilograms.",
    "Football matches are divided into two halves of forty-five minutes each.",
    "A standard deck contains fifty-two cards divided into four suits.",
    "Most trains run on two parallel steel rails.",
    "The Latin alphabet is used to write English, French and Spanish.",
    "A triangle has three sides and three angles.",
    "Coffee beans are the roasted seeds of the coffee plant.",
    "Wheat is ground into flour to make bread and pasta.",
    "The Olympic Games are usually held every four years.",
]


# ---------------------------------------------------------------------------
# Validation and writing
# ---------------------------------------------------------------------------

BUILDERS = {
    "sentiment": build_sentiment,
    "formality": build_formality,
    "refusal": build_refusal,
    "truthfulness": build_truthfulness,
    "confidence": build_confidence,
}


def n_words(text: str) -> int:
    return len(text.split())


def validate_pairs(name: str, pairs: list[dict]) -> None:
    assert len(pairs) >= 150, f"{name}: only {len(pairs)} pairs"
    seen_pairs: set[tuple[str, str]] = set()
    prompts = set()
    for pair in pairs:
        assert set(pair) == {"prompt", "positive", "negative"}, pair
        pos, neg = pair["positive"], pair["negative"]
        assert pos != neg, pair
        for side in (pos, neg):
            assert MIN_WORDS <= n_words(side) <= MAX_WORDS, f"{name}: bad length: {side!r}"
            assert "  " not in side and side == side.strip(), side
        assert abs(n_words(pos) - n_words(neg)) <= MAX_WORD_GAP, f"{name}: unbalanced pair {pair}"
        assert (pos, neg) not in seen_pairs, f"{name}: duplicate pair {pair}"
        seen_pairs.add((pos, neg))
        prompts.add(pair["prompt"])
    assert len(prompts) >= 40, f"{name}: only {len(prompts)} distinct prompts"


def build_all() -> dict[str, str]:
    """Return {file name: file content} for every generated file."""
    files: dict[str, str] = {}
    for index, name in enumerate(BEHAVIOURS):
        rng = random.Random(SEED + index)
        pairs = BUILDERS[name](rng)
        rng.shuffle(pairs)
        validate_pairs(name, pairs)
        if name == "sentiment":
            check_eval_prompts_held_out(pairs)
        files[f"{name}.jsonl"] = "".join(json.dumps(p, ensure_ascii=True) + "\n" for p in pairs)

    assert len(NEUTRAL_SENTENCES) >= 80 and len(set(NEUTRAL_SENTENCES)) == len(NEUTRAL_SENTENCES)
    files["neutral.txt"] = "".join(s + "\n" for s in NEUTRAL_SENTENCES)

    eval_prompts = [prompt for _key, prompt in SENTIMENT_EVAL]
    assert len(eval_prompts) >= 30 and len(set(eval_prompts)) == len(eval_prompts)
    files["sentiment_eval_prompts.txt"] = "".join(p + "\n" for p in eval_prompts)
    return files


def write_all(out_dir: Path | str) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, content in build_all().items():
        path = out_dir / filename
        path.write_bytes(content.encode("utf-8"))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default: %(default)s)")
    args = parser.parse_args(argv)
    for path in write_all(args.out):
        n_lines = path.read_text(encoding="utf-8").count("\n")
        print(f"wrote {path} ({n_lines} lines)")


if __name__ == "__main__":
    main()

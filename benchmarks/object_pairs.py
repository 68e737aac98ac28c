"""Happy / sad contrast pairs about everyday objects and places, written from templates.

The bundled sentiment pairs (``steering/datasets/sentiment.jsonl``) all ask about an
experience ("How was your ski trip?"); steering trained on them barely moves
prompts that ask to describe an object ("Describe a tea towel in one sentence.",
results/sentiment-2026-12-01, section 12), and the model's own replies to such
prompts contrast weakly. These pairs ask about objects and places in the prompt
forms of the search prompts and answer with matched sentences that differ only in
their sentiment words (several per sentence, as the bundled pairs), so a direction
trained on them sees the contrast on descriptions of things. The nouns are none of
those the search prompts (``sentiment_eval_prompts.txt``) or the held-out check's
prompts (``data/sentiment_check_prompts*.txt``) name; ``--check`` verifies it.
Writes JSONL that ``data.path=`` reads; ``--mix N`` alternates them with the first
``N`` bundled pairs (as ``self_pairs.py --mix``)::

    python benchmarks/object_pairs.py --out benchmarks/data/sentiment_object_pairs.jsonl --check
    python benchmarks/object_pairs.py --mix 100 --out outputs/sentiment-objects-mix.jsonl
    steering run experiment=sentiment_auto data.path=outputs/sentiment-objects-mix.jsonl data.max_pairs=null ...

Deterministic for a seed (the template, word choice and prompt form are drawn per noun).
"""

from __future__ import annotations

import argparse
import json
import random
import re
from dataclasses import asdict
from pathlib import Path

from _common import ROOT

import steering as st

# Nouns (with their indefinite article) that no search or check prompt names.
NOUNS = [
    "a wooden spoon", "a garden hose", "a ceramic vase", "a leather wallet", "a wool scarf",
    "a doormat", "a picture frame", "a toaster", "a hall mirror", "a bathtub",
    "a candle", "a rug", "a pillow", "a backpack", "a suitcase",
    "a stapler", "a ladder", "a stone bridge", "a fountain", "an oak tree",
    "a hotel lobby", "a museum gallery", "a bookshop", "a cinema", "a beach",
    "a mountain path", "a forest trail", "a lake", "a harbour", "a farmhouse",
    "a barn", "a cafe", "a restaurant", "a gym", "a stadium",
    "a church", "a castle", "a garden gate", "a toolbox", "a frying pan",
    "a blanket", "a sofa", "a microwave", "a radio", "a television",
    "a piano", "a guitar", "a painting", "a statue", "a photograph",
    "a map", "a compass", "a wristwatch", "a ring", "a hat",
    "a raincoat", "a jacket", "a sweater", "a pair of gloves", "a pair of boots",
    "a loaf of bread", "an apple", "an orange", "a bowl of soup", "a pizza",
    "a birthday cake", "an apple pie", "an ice cream cone", "a glass of lemonade", "a teapot",
    "a flower pot", "a bird feeder", "a seesaw", "a tent", "a campfire",
    "a sailing boat", "a lighthouse", "an airport lounge", "a guest cottage", "a farmers' field",
    "a snowman", "a kite", "a jigsaw puzzle", "a board game", "a teddy bear",
    "a toy robot", "a sandcastle", "a treehouse", "a fireplace", "a staircase railing",
    "a greenhouse", "a vegetable patch", "a wheelbarrow", "a rowing boat", "a country lane",
    "a market stall", "a hot air balloon", "a hammock", "a picnic basket", "a snow globe",
]  # fmt: skip

PROMPTS = [
    "Describe {a} in one sentence.",
    "Describe {the}.",
    "Write a sentence about {a}.",
    "Tell me about {a}.",
    "What do you think of {the}?",
]

# Each template has slots {p0}, {p1}, ... filled with a positive word or its negative twin.
TEMPLATES = [
    "{The} is {p0} and {p1}; I {p2} it, and it makes me {p3}.",
    "This {noun} is so {p0}: {p1}, {p4} and {p5}, a {p6} to look at.",
    "{The} {p7} me; it is {p0}, {p1} and {p3} to be near.",
    "Honestly, {the} is {p8}: {p0} and {p5}, and I feel {p3} whenever I see it.",
    "Seeing {the} fills me with {p6}; it is {p0}, and I {p2} everything about it.",
]

# Sentiment words: (positive, negative) per slot; a slot draws one pair.
SLOTS = {
    "p0": [("beautiful", "ugly"), ("lovely", "horrible"), ("wonderful", "awful"), ("gorgeous", "hideous"), ("delightful", "dreadful")],
    "p1": [("charming", "disgusting"), ("perfect", "broken"), ("pleasant", "nasty"), ("splendid", "wretched"), ("excellent", "terrible")],
    "p2": [("love", "hate"), ("adore", "despise"), ("treasure", "loathe")],
    "p3": [("happy", "miserable"), ("joyful", "sad"), ("cheerful", "depressed"), ("glad", "upset"), ("delighted", "unhappy")],
    "p4": [("bright", "grim"), ("warm", "bleak"), ("sunny", "gloomy")],
    "p5": [("inviting", "repulsive"), ("cheerful", "depressing"), ("comforting", "painful")],
    "p6": [("joy", "misery"), ("delight", "dread"), ("pleasure", "torment")],
    "p7": [("delights", "disgusts"), ("thrills", "sickens"), ("pleases", "upsets")],
    "p8": [("the best thing here", "the worst thing here"), ("a true treasure", "a total disaster"), ("a real gem", "a real eyesore")],
}


def pair(noun: str, rng: random.Random) -> dict[str, str]:
    """One prompt and its matched positive / negative replies about ``noun`` ("a lake")."""
    bare = noun.split(" ", 1)[1]
    names = {"a": noun, "the": f"the {bare}", "The": f"The {bare}", "noun": bare}
    template = rng.choice(TEMPLATES)
    words = {slot: rng.choice(options) for slot, options in SLOTS.items()}
    positive = template.format(**names, **{s: w[0] for s, w in words.items()})
    negative = template.format(**names, **{s: w[1] for s, w in words.items()})
    return {"prompt": rng.choice(PROMPTS).format(**names), "positive": positive, "negative": negative}


def check(nouns: list[str]) -> None:
    """Fail when a noun appears in a search or held-out check prompt."""
    files = [
        ROOT / "steering/datasets/sentiment_eval_prompts.txt",
        *sorted((ROOT / "benchmarks/data").glob("sentiment_check_prompts*.txt")),
    ]
    text = " ".join(f.read_text().lower() for f in files)
    clashes = [n for n in nouns if re.search(rf"\b{re.escape(n.split(' ', 1)[1].split()[-1])}s?\b", text)]
    if clashes:
        raise SystemExit(f"nouns named by search or check prompts: {clashes}")
    print(f"checked: none of the {len(nouns)} nouns occurs in {', '.join(f.name for f in files)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--check", action="store_true", help="fail if a noun occurs in a search or check prompt")
    parser.add_argument("--mix", type=int, default=0, help="alternate with the first N bundled sentiment pairs")
    args = parser.parse_args()
    if len(set(NOUNS)) != len(NOUNS):
        raise SystemExit("NOUNS has repeats")
    if args.check:
        check(NOUNS)
    rng = random.Random(args.seed)
    rows = [pair(noun, rng) for noun in NOUNS]
    if args.mix:
        bundled = [asdict(p) for p in st.load_pairs("sentiment")[: args.mix]]
        rows = [row for two in zip(bundled, rows, strict=False) for row in two] + rows[len(bundled) :] + bundled[len(rows) :]
    args.out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    print(f"wrote {len(rows)} pairs to {args.out}")


if __name__ == "__main__":
    main()

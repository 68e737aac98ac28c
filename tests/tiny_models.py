"""Tiny, random-weight causal LMs and an in-memory tokenizer for unit tests.

Why this module exists
----------------------
Unit tests must be fast, deterministic and must never touch the Hugging Face
hub (CI and sandboxes have no network; ``HF_HUB_OFFLINE=1``).  Instead of
downloading even a "tiny" checkpoint, every model here is built directly from
a config with random weights (seeded), and the tokenizer is trained in memory
with the ``tokenizers`` library on a small built-in English corpus.  Building a
model takes a few milliseconds, so tests can freely create fresh ones.

The architectures cover the decoder-layer layouts the steering code has to
handle: Llama-style (``model.model.layers``: llama, qwen2, qwen3, mistral,
gemma, gemma2, gemma3, phi3), GPT-2 (``transformer.h``), GPT-NeoX
(``gpt_neox.layers``) and OPT (``model.decoder.layers``).  Gemma2/Gemma3 get a
small ``sliding_window`` and a mixed ``layer_types`` pattern so sliding-window
attention is exercised by prompts longer than 16 tokens.

This is a helper module, not a test file (pytest does not collect it because
its name does not start with ``test_``).  Import it from tests as
``from tiny_models import make_tiny`` (``tests/`` is on ``sys.path`` under
pytest's default rootdir-based import mode) or ``from tests.tiny_models import``.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402

__all__ = [
    "ARCHS",
    "VOCAB_SIZE",
    "HIDDEN_SIZE",
    "NUM_LAYERS",
    "NUM_HEADS",
    "NUM_KV_HEADS",
    "MAX_POSITIONS",
    "PAD_ID",
    "BOS_ID",
    "EOS_ID",
    "CHAT_TEMPLATE",
    "make_tiny_model",
    "make_tiny_tokenizer",
    "make_tiny",
]

#: Architectures supported by :func:`make_tiny_model` (HF ``model_type`` names;
#: ``"gemma3"`` means the text-only ``Gemma3ForCausalLM``).
ARCHS: tuple[str, ...] = (
    "llama",
    "qwen2",
    "qwen3",
    "mistral",
    "gemma",
    "gemma2",
    "gemma3",
    "gpt2",
    "gpt_neox",
    "phi3",
    "opt",
)

VOCAB_SIZE = 512
HIDDEN_SIZE = 32
NUM_LAYERS = 3
NUM_HEADS = 4
NUM_KV_HEADS = 2
HEAD_DIM = HIDDEN_SIZE // NUM_HEADS  # 8
INTERMEDIATE_SIZE = 64
MAX_POSITIONS = 512
SLIDING_WINDOW = 16
#: Init std for the random weights.  The HF default (0.02) gives nearly
#: constant logits at hidden size 32, so greedy generation degenerates into
#: repeating one token; 0.2 gives clearly input-dependent outputs while keeping
#: residual-stream norms modest (~10).  Input and output embeddings are always
#: *untied*: with tied random embeddings the logit of the current input token
#: dominates and models (notably Gemma2/3) just repeat the last prompt token.
INIT_STD = 0.2

PAD_TOKEN, BOS_TOKEN, EOS_TOKEN = "<pad>", "<s>", "</s>"
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2

#: Minimal chat template: ``<|user|>\\n{content}</s>\\n`` per message, plus
#: ``<|assistant|>\\n`` when ``add_generation_prompt=True``.  No BOS is rendered
#: (and the tokenizer never adds one), so ``apply_chat_template(tokenize=True)``
#: equals encoding the rendered string.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '</s>' + '\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{ '<|assistant|>\n' }}"
    "{%- endif -%}"
)

_CORPUS = """\
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.
I love sunny days at the beach, but I hate the cold and rainy winter mornings.
This movie was wonderful, happy and full of joy! That film was terrible, sad and boring.
What is the capital of France? The capital of France is Paris. Paris is a beautiful city.
How are you today? I am fine, thank you very much. Please tell me a story about a dragon.
Once upon a time, there was a little girl who lived in a small house near the forest.
She walked to the market every morning to buy bread, milk, eggs and fresh fruit.
The weather is nice and warm; the sky is blue and the birds are singing in the trees.
Write a short poem about the ocean. The waves roll in and out, again and again.
My favorite numbers are 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 42, 100 and 2024.
He said: "Hello, world!" and she answered, 'Good morning, everyone.'
Science is the study of nature: physics, chemistry, biology, and the stars above.
People often feel angry, calm, excited, afraid, proud, grateful or hopeful.
You are a helpful assistant. Answer the question honestly and politely.
It's important to eat well, sleep well, and exercise (at least 30 minutes a day).
The model generates text one token at a time; each token depends on the previous ones.
Great job! Thanks for the help. Sorry, I don't know the answer to that question.
Love, hate, peace, war, friend, enemy, truth, lie, light, dark, good, bad.
Computers, phones & tablets: e-mail, web pages, games, music, videos, and more...
Where do you want to go? When will you come back? Why is the sky blue? Who are you?
"""


def _corpus_lines() -> list[str]:
    return [line for line in _CORPUS.splitlines() if line.strip()]


@functools.cache
def _build_backend_tokenizer() -> Tokenizer:
    """Train (once per process) the byte-level BPE ``tokenizers.Tokenizer``.

    Training is deterministic (single pass over a fixed corpus, no dropout).
    The cached object is never handed out directly: ``PreTrainedTokenizerFast``
    deep-copies ``tokenizer_object`` on construction.
    """
    tok = Tokenizer(models.BPE())
    # add_prefix_space=False + ByteLevel decoder => exact round trip for any text.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=1,
        special_tokens=[PAD_TOKEN, BOS_TOKEN, EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus_lines(), trainer=trainer)
    if tok.get_vocab_size() != VOCAB_SIZE:  # pragma: no cover - guards corpus edits
        raise RuntimeError(f"tiny tokenizer has {tok.get_vocab_size()} tokens, expected {VOCAB_SIZE}")
    for token, idx in ((PAD_TOKEN, PAD_ID), (BOS_TOKEN, BOS_ID), (EOS_TOKEN, EOS_ID)):
        assert tok.token_to_id(token) == idx, (token, tok.token_to_id(token))
    return tok


def make_tiny_tokenizer(chat_template: bool = True) -> transformers.PreTrainedTokenizerFast:
    """Return a fresh tiny byte-level BPE tokenizer (no hub access).

    * vocabulary: exactly ``VOCAB_SIZE`` (512) tokens; ids 0/1/2 are the special
      tokens ``<pad>``/``<s>``/``</s>`` and are set as ``pad_token``,
      ``bos_token`` and ``eos_token``.
    * byte-level: any text (letters, digits, punctuation, whitespace, unicode)
      round-trips exactly through ``encode``/``decode``.
    * no special tokens are added on encode (GPT-2/Qwen style, no BOS/EOS),
      so ``decode(encode(text)) == text``.
    * ``padding_side`` defaults to ``"right"``; set ``tok.padding_side = "left"``
      for batched generation.
    * ``chat_template=True`` installs :data:`CHAT_TEMPLATE` (instruct-model
      behaviour); ``False`` leaves ``chat_template`` as ``None`` (base model).

    The BPE training is cached per process; each call returns a *new*
    tokenizer object, so mutating it (padding side, template, added tokens)
    does not leak between tests.  A call costs well under a millisecond.
    """
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=_build_backend_tokenizer(),
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        model_max_length=MAX_POSITIONS,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    tok.chat_template = CHAT_TEMPLATE if chat_template else None
    return tok


def _ids() -> dict:
    return {"pad_token_id": PAD_ID, "bos_token_id": BOS_ID, "eos_token_id": EOS_ID}


def _make_config(arch: str, vocab_size: int) -> tuple[type, transformers.PretrainedConfig]:
    """Return ``(model_class, config)`` for ``arch`` with tiny dimensions."""
    t = transformers
    ids = _ids()
    llama_like = dict(
        vocab_size=vocab_size,
        hidden_size=HIDDEN_SIZE,
        intermediate_size=INTERMEDIATE_SIZE,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=NUM_HEADS,
        num_key_value_heads=NUM_KV_HEADS,
        max_position_embeddings=MAX_POSITIONS,
        initializer_range=INIT_STD,
        tie_word_embeddings=False,
        **ids,
    )
    gemma_like = dict(llama_like, head_dim=HEAD_DIM)
    sliding_pattern = ["sliding_attention", "full_attention", "sliding_attention"]

    if arch == "llama":
        return t.LlamaForCausalLM, t.LlamaConfig(**llama_like)
    if arch == "qwen2":
        return t.Qwen2ForCausalLM, t.Qwen2Config(**llama_like)
    if arch == "qwen3":
        return t.Qwen3ForCausalLM, t.Qwen3Config(**llama_like, head_dim=HEAD_DIM)
    if arch == "mistral":
        return t.MistralForCausalLM, t.MistralConfig(**llama_like, head_dim=HEAD_DIM, sliding_window=None)
    if arch == "gemma":
        return t.GemmaForCausalLM, t.GemmaConfig(**gemma_like)
    if arch == "gemma2":
        cfg = t.Gemma2Config(
            **gemma_like,
            query_pre_attn_scalar=HEAD_DIM,
            sliding_window=SLIDING_WINDOW,
            layer_types=sliding_pattern,
        )
        return t.Gemma2ForCausalLM, cfg
    if arch == "gemma3":
        cfg = t.Gemma3TextConfig(
            **gemma_like,
            query_pre_attn_scalar=HEAD_DIM,
            sliding_window=SLIDING_WINDOW,
            layer_types=sliding_pattern,
        )
        return t.Gemma3ForCausalLM, cfg
    if arch == "phi3":
        cfg = t.Phi3Config(**dict(llama_like, original_max_position_embeddings=MAX_POSITIONS))
        return t.Phi3ForCausalLM, cfg
    if arch == "gpt2":
        cfg = t.GPT2Config(
            vocab_size=vocab_size,
            n_positions=MAX_POSITIONS,
            n_embd=HIDDEN_SIZE,
            n_layer=NUM_LAYERS,
            n_head=NUM_HEADS,
            n_inner=INTERMEDIATE_SIZE,
            initializer_range=INIT_STD,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            tie_word_embeddings=False,
            **ids,
        )
        return t.GPT2LMHeadModel, cfg
    if arch == "gpt_neox":
        cfg = t.GPTNeoXConfig(
            vocab_size=vocab_size,
            hidden_size=HIDDEN_SIZE,
            intermediate_size=INTERMEDIATE_SIZE,
            num_hidden_layers=NUM_LAYERS,
            num_attention_heads=NUM_HEADS,
            max_position_embeddings=MAX_POSITIONS,
            initializer_range=INIT_STD,
            tie_word_embeddings=False,
            **ids,
        )
        return t.GPTNeoXForCausalLM, cfg
    if arch == "opt":
        cfg = t.OPTConfig(
            vocab_size=vocab_size,
            hidden_size=HIDDEN_SIZE,
            word_embed_proj_dim=HIDDEN_SIZE,
            ffn_dim=INTERMEDIATE_SIZE,
            num_hidden_layers=NUM_LAYERS,
            num_attention_heads=NUM_HEADS,
            max_position_embeddings=MAX_POSITIONS,
            do_layer_norm_before=True,
            init_std=INIT_STD,
            dropout=0.0,
            attention_dropout=0.0,
            tie_word_embeddings=False,
            **ids,
        )
        return t.OPTForCausalLM, cfg
    raise ValueError(f"unknown tiny arch {arch!r}; expected one of {ARCHS}")


def make_tiny_model(arch: str, seed: int = 0, vocab_size: int = VOCAB_SIZE) -> transformers.PreTrainedModel:
    """Build a tiny random-weight ``*ForCausalLM`` for ``arch`` (no hub access).

    Shape: hidden size 32, 3 decoder layers, 4 attention heads (2 KV heads
    where the architecture supports GQA), MLP width 64, 512 positions,
    float32, eager attention, eval mode, untied input/output embeddings,
    dropout disabled, ``INIT_STD = 0.2`` init.  Gemma2/Gemma3 use
    ``sliding_window=16`` with ``layer_types = [sliding, full, sliding]``.

    Weights are drawn from a private RNG seeded with ``seed`` (the global torch
    RNG state is left untouched): the same seed gives an identical
    ``state_dict``, different seeds give different weights.  Token ids
    ``pad/bos/eos = 0/1/2`` match :func:`make_tiny_tokenizer`, both in the
    config and in ``model.generation_config``.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown tiny arch {arch!r}; expected one of {ARCHS}")
    cls, config = _make_config(arch, vocab_size)
    config._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config)
    model.to(torch.float32)
    model.eval()
    model.config.use_cache = True
    gen = model.generation_config
    gen.pad_token_id, gen.bos_token_id, gen.eos_token_id = PAD_ID, BOS_ID, EOS_ID
    gen.do_sample = False
    return model


def make_tiny(
    arch: str, seed: int = 0, chat_template: bool = True
) -> tuple[transformers.PreTrainedModel, transformers.PreTrainedTokenizerFast]:
    """Return ``(make_tiny_model(arch, seed), make_tiny_tokenizer(chat_template))``."""
    return make_tiny_model(arch, seed=seed), make_tiny_tokenizer(chat_template=chat_template)


def save_tiny(folder: str | os.PathLike[str], arch: str = "llama") -> Path:
    """Save ``make_tiny(arch)`` as a Hugging Face folder (for CLI and ``load_model`` tests); return it."""
    folder = Path(folder)
    model, tok = make_tiny(arch)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder

"""Cheap probe: which vector recipe / operation moves sentiment most inside the budget?

For each candidate (vector data x method x read x layer window x mode x apply_to)
and each sign, it walks a ladder of strengths, measures the side effects on
the bundled neutral sentences the way ``steering run`` does (replies to
``Tell me a fact.`` with a chat template, else plain documents; perplexity
ratio and KL per token, through `experiments.metrics.replies`), keeps the
strongest strength inside the budget (neutral ppl <= 1.3, KL <= 0.3) and only
then generates from a few *search* prompts (``sentiment_eval_prompts.txt``,
never the held-out check's prompts) and scores them with the project's VADER
scorer. Prints one line per candidate and sign; ``--out`` writes them as JSON.

    python benchmarks/sentiment_probe.py --prompts 12 --tokens 24 --only 10:13
    python benchmarks/sentiment_probe.py --candidates repeng-last-mean_diff-add-all-10:13
    python benchmarks/sentiment_probe.py --candidates bundled-last-bipo-add-all-18:18 --ladder 0.25 0.5 0.75 1 1.25 1.5

Candidates are named ``<data>-<read>-<method>-<mode>-<apply_to>-<first:last layer>``
(``CANDIDATES`` lists the ones compared on 2026-12-01; ``--candidates`` takes any);
data: ``bundled`` (100 bundled sentiment pairs, as ``steering run`` uses), ``bundled200``,
``bundledcut`` (the same pairs cut after their first sentiment word), ``posneutral`` /
``neutralneg`` (one pole against the same sentences with neutral words),
``repe`` (RepE happiness vs sadness scenarios), ``bundled+repe``, ``repeng`` (repeng's
persona recipe: "Act as if you're extremely happy/sad." + a short opening), ``objects``
(``data/sentiment_object_pairs.jsonl``: templated pairs about objects and places, written by
``object_pairs.py``), ``bundled+objects`` (the two alternating); method:
any in ``steering.METHODS`` (``bipo`` is trained at the candidate's layers only). The
strongest strength inside the budget is taken per sign (the ladder stops at the first
strength over it). Results of 2026-12-01: ``benchmarks/results/sentiment-2026-12-01/``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from _common import ROOT, machine_info

import steering as st
from steering import METHODS
from steering.experiments.metrics.neutral import kl_sum
from steering.experiments.metrics.replies import encode_replies, iter_reply_logprobs, reply_logprobs, token_logprobs
from steering.experiments.metrics.text import DEGENERATE_DISTINCT2
from steering.scoring import sentiment_scorer
from steering.vectors.text import format_prompt, has_chat_template

SHARED = ROOT.parent / "shared" / "data"
DATASETS = ROOT / "steering" / "datasets"

# Strength ladders (add: total over the window, split evenly; angular: degrees per layer;
# clamp: multiples of |v| per layer), walked until the budget breaks.
LADDERS: dict[str, list[float]] = {
    "add": [0.5, 1, 1.5, 2, 3, 4, 5, 6, 8, 10, 12, 16, 24, 32, 48, 64],
    "angular": [5, 10, 15, 20, 30, 40, 50, 60, 75, 90],
    "clamp": [0.5, 1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32],
}


def pairs_for(data: str, tok: Any) -> list[Any]:
    if data == "bundled":
        return st.load_pairs("sentiment")[:100]
    if data == "bundled200":
        return st.load_pairs("sentiment")
    if data == "repe":  # RepE emotion scenarios: happiness vs sadness, unpaired, as plain text
        happy = json.loads((SHARED / "repe/emotions/happiness.json").read_text())
        sad = json.loads((SHARED / "repe/emotions/sadness.json").read_text())
        return [(h, s) for h, s in zip(happy, sad)][:150]
    if data == "repeng":  # repeng's emotion recipe: a persona in the user turn, a short opening as the reply
        starters = json.loads((SHARED / "repe/emotions/all_truncated_outputs.json").read_text())[1:]

        def text(persona: str, starter: str) -> str:
            return format_prompt(tok, f"Act as if you're extremely {persona}.")[0] + starter

        return [(text("happy", s), text("sad", s)) for s in starters[:200]]
    if data in ("posneutral", "neutralneg"):  # one pole against the same sentences with neutral words
        poled = [
            (pair.positive, _neutral(pair.positive, pair.negative))
            if data == "posneutral"
            else (_neutral(pair.positive, pair.negative), pair.negative)
            for pair in st.load_pairs("sentiment")[:100]
        ]
        return [st.ContrastPair(a, b, pair.prompt) for (a, b), pair in zip(poled, st.load_pairs("sentiment")[:100])]
    if data == "bundledcut":  # each pair cut after its first sentiment word: the last token read is that word
        cut = []
        for pair in st.load_pairs("sentiment")[:100]:
            a, b = pair.positive.split(), pair.negative.split()
            first = next(i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y)
            cut.append(st.ContrastPair(" ".join(a[: first + 1]).rstrip(".,!"), " ".join(b[: first + 1]).rstrip(".,!"), pair.prompt))
        return cut
    if data == "bundled+repe":
        return pairs_for("bundled200", tok) + pairs_for("repe", tok)
    if data == "objects":  # templated pairs about objects and places (object_pairs.py)
        return st.load_pairs(ROOT / "benchmarks/data/sentiment_object_pairs.jsonl")
    if data == "bundled+objects":  # alternating, as `steering run` reads a mixed file
        return [p for two in zip(pairs_for("bundled", tok), pairs_for("objects", tok)) for p in two]
    raise SystemExit(f"unknown data {data!r}")


# The bundled pairs differ only in sentiment words (positive/negative slots); these
# neutral words fill the same slots, so a pole minus its neutral twin keeps the form.
NEUTRAL_WORDS = {
    "happy": "calm",
    "thrilled": "unmoved",
    "grateful": "indifferent",
    "joyful": "calm",
    "pleased": "neutral",
    "lovely": "ordinary",
    "delightful": "unremarkable",
    "delighted": "indifferent",
    "loved": "watched",
    "perfect": "average",
    "amazing": "ordinary",
    "fond": "vague",
    "cheerful": "calm",
    "fantastic": "routine",
    "enjoyed": "noticed",
    "adored": "noticed",
    "wonderful": "uneventful",
    "brilliant": "ordinary",
    "warm": "plain",
    "sweet": "plain",
}


def _neutral(positive: str, negative: str) -> str:
    out = []
    for a, b in zip(positive.split(), negative.split(), strict=True):
        if a == b:
            out.append(a)
            continue
        word = a.rstrip(".,!")
        out.append(NEUTRAL_WORDS[word] + a[len(word) :])
    return " ".join(out)


def parse(name: str) -> dict[str, Any]:
    data, read, method, mode, apply_to, window = name.split("-")
    first, last = (int(x) for x in window.split(":"))
    return {"data": data, "read": read, "method": method, "mode": mode, "apply_to": apply_to, "layers": list(range(first, last + 1))}


CANDIDATES = [
    "bundled-last-mean_diff-add-all-10:13",
    "bundled-mean-mean_diff-add-all-10:13",
    "bundled-last-pca_diff-add-all-10:13",
    "bundled-last-mean_diff-add-generated-10:13",
    "bundled-last-mean_diff-add-all-6:13",
    "bundled-last-mean_diff-add-all-4:19",
    "bundled-last-mean_diff-angular-all-10:13",
    "bundled-last-probe-add-all-10:13",
    "bundled-last-mean_diff-add-all-17:20",
    "bundled-last-mean_diff-add-all-19:22",
    "bundled-last-mean_diff-add-all-21:24",
    "bundled-last-mean_diff-add-all-14:22",
    "repe-last-mean_diff-add-all-10:13",
    "bundled+repe-last-mean_diff-add-all-10:13",
    "repeng-last-mean_diff-add-all-10:13",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--neutral", type=int, default=48)
    parser.add_argument("--only", nargs="*", default=None, help="substrings of candidate names")
    parser.add_argument("--candidates", nargs="*", default=None, help="candidate names (default: CANDIDATES)")
    parser.add_argument("--ppl", type=float, default=1.3)
    parser.add_argument("--kl", type=float, default=0.3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ladder", type=float, nargs="*", default=None, help="strengths to walk instead of LADDERS[mode], ascending")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="4 prompts, 12 tokens, 16 neutral sentences, the first candidate")
    args = parser.parse_args()
    if args.ladder and (sorted(args.ladder) != args.ladder or args.ladder[0] <= 0):
        parser.error(f"--ladder must be positive and ascending, got {args.ladder}")
    if args.quick:
        args.prompts, args.tokens, args.neutral = 4, 12, 16
        args.candidates = (args.candidates or CANDIDATES)[:1]
    torch.set_num_threads(args.threads)
    model, tok = st.load_model(args.model)
    model.eval()
    chat = has_chat_template(tok)
    prompts = [p.strip() for p in (DATASETS / "sentiment_eval_prompts.txt").read_text().splitlines() if p.strip()][: args.prompts]
    neutral = [s.strip() for s in (DATASETS / "neutral.txt").read_text().splitlines() if s.strip()][: args.neutral]
    batches = encode_replies(tok, ["Tell me a fact." if chat else None] * len(neutral), neutral, chat=chat, batch_size=48)
    plain = [reply_logprobs(model, b) for b in batches]
    base_nll, tokens = 0.0, 0
    for batch, lp in zip(batches, plain):
        picked, mask = token_logprobs(batch, lp)
        base_nll -= float(picked[mask].double().sum())
        tokens += int(mask.sum())
    score = sentiment_scorer()

    def side_effects(spec: Any, coef: float, mode: str, apply_to: str) -> tuple[float, float]:
        nll = kl = 0.0
        with st.steer(model, spec, coef=coef, mode=mode, apply_to=apply_to):
            for batch, lp_plain, (_, lp) in zip(batches, plain, iter_reply_logprobs(model, batches)):
                picked, mask = token_logprobs(batch, lp)
                nll -= float(picked[mask].double().sum())
                kl += kl_sum(lp_plain[:, :-1][mask], lp[:, :-1][mask])
        return math.exp((nll - base_nll) / tokens), kl / tokens

    def sentiment(spec: Any, coef: float, mode: str, apply_to: str) -> tuple[float, float, list[str]]:
        texts = st.generate(model, tok, prompts, spec, coef, max_new_tokens=args.tokens, mode=mode, apply_to=apply_to, batch_size=12)
        words = [t.lower().split() for t in texts]
        d2 = [len(set(zip(w, w[1:]))) / max(1, len(w) - 1) for w in words]
        return sum(score(texts)) / len(texts), sum(d < DEGENERATE_DISTINCT2 for d in d2) / len(texts), texts

    t0 = time.perf_counter()
    base_texts = st.generate(model, tok, prompts, None, max_new_tokens=args.tokens, batch_size=12)
    base = sum(score(base_texts)) / len(base_texts)
    print(f"unsteered sentiment {base:.3f}  ({time.perf_counter() - t0:.0f}s)", flush=True)
    rows: list[dict[str, Any]] = []
    names = args.candidates or CANDIDATES
    if args.only:
        names = [n for n in names if any(s in n for s in args.only)]
    vectors: dict[tuple[str, str, str, tuple[int, ...] | None], st.SteeringVector] = {}
    for name in names:
        c = parse(name)
        # bipo trains each layer (minutes apiece): only the candidate's layers, not all of them.
        layers = c["layers"] if METHODS[c["method"]].fit is not None else None
        key = (c["data"], c["read"], c["method"], None if layers is None else tuple(layers))
        if key not in vectors:
            vectors[key] = st.extract(model, tok, pairs_for(c["data"], tok), layers=layers, method=c["method"], read=c["read"])
        vec = vectors[key]
        for sign in (1, -1):
            best = None
            for step in args.ladder or LADDERS[c["mode"]]:
                if c["mode"] == "add":
                    spec, coef = vec.select(c["layers"]), sign * step / len(c["layers"])
                else:
                    spec, coef = vec.select(c["layers"]).normalized() if c["mode"] == "clamp" else vec.select(c["layers"]), sign * step
                ppl, kl = side_effects(spec, coef, c["mode"], c["apply_to"])
                if ppl > args.ppl or kl > args.kl:
                    break
                best = (step, coef, ppl, kl, spec)
            if best is None:
                rows.append({"candidate": name, "sign": sign, "status": "nothing inside budget"})
                print(f"{name:48s} {sign:+d}  nothing inside budget", flush=True)
                continue
            step, coef, ppl, kl, spec = best
            value, degenerate, texts = sentiment(spec, coef, c["mode"], c["apply_to"])
            row = {"candidate": name, "sign": sign, "strength": step, "coef": coef, "sentiment": value, "change": value - base}
            row.update(neutral_ppl=ppl, kl=kl, degenerate=degenerate, example=texts[0])
            rows.append(row)
            print(
                f"{name:48s} {sign:+d} strength {step:5g}  sentiment {value:+.3f}  ppl {ppl:.2f} kl {kl:.2f} "
                f"degen {degenerate:.2f}  | {texts[0][:70]!r}  ({time.perf_counter() - t0:.0f}s)",
                flush=True,
            )
    if args.out:
        payload = {
            "machine": machine_info("cpu", args.threads),
            "args": vars(args) | {"out": str(args.out)},
            "unsteered": base,
            "rows": rows,
        }
        args.out.write_text(json.dumps(payload, indent=1) + "\n")


if __name__ == "__main__":
    main()

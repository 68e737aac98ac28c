"""Contrast pairs the model writes itself: its replies under the behaviour's instruction and its opposite.

For each prompt of a pair set, `steering.self_written_pairs`: the model's greedy
reply to the prompt asked with the positive instruction and with the negative one
(``data.instructions`` of a ``conf/run/data`` file, asked as the prompting
baseline asks) becomes a pair whose prompt is the plain prompt. ``--mix`` puts the
set's own first ``n`` pairs in too, alternating with the written ones. Writes
JSONL that ``data.path=`` reads (``steering run data.self_pairs=add`` does the
same inside a run, see the README):

    python benchmarks/self_pairs.py --n 100 --mix --out outputs/sentiment-self-mix.jsonl
    steering run experiment=sentiment_auto data.path=outputs/sentiment-self-mix.jsonl data.max_pairs=null ...

Greedy decoding, so the file is the same for the same model and settings. A
prompt with an empty reply gives no pair (counted in the output).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from itertools import zip_longest
from pathlib import Path

import torch
from _common import ROOT, machine_info
from omegaconf import OmegaConf

import steering as st
from steering.scoring import sentiment_scorer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--data", default="sentiment", help="a conf/run/data file: its pairs' prompts and its instructions")
    parser.add_argument("--n", type=int, default=100, help="the first N distinct prompts")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--mix", action="store_true", help="alternate with the set's own first N pairs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    conf = OmegaConf.load(ROOT / "conf" / "run" / "data" / f"{args.data}.yaml")
    instructions = dict(conf.get("instructions") or {})
    if not instructions.get("positive") or not instructions.get("negative"):
        raise SystemExit(f"conf/run/data/{args.data}.yaml: instructions.positive and .negative are needed")
    given = st.load_pairs(str(conf.path))
    prompts = list(dict.fromkeys(p.prompt for p in given if p.prompt))[: args.n]
    if len(prompts) < args.n:
        raise SystemExit(f"data {conf.path!r} has {len(prompts)} distinct prompts, fewer than --n {args.n}")
    model, tok = st.load_model(args.model)
    model.eval()
    t0 = time.perf_counter()
    pairs = st.self_written_pairs(
        model, tok, prompts, instructions["positive"], instructions["negative"], max_new_tokens=args.tokens, batch_size=25
    )

    def row(pair: st.ContrastPair) -> dict[str, str | None]:
        return {"prompt": pair.prompt, **asdict(pair)}  # the prompt first, as the bundled files have it

    made = [row(p) for p in pairs]
    rows = made
    if args.mix:  # alternating; a prompt whose reply was empty leaves its own pair unmatched, still written
        rows = [row for both in zip_longest([row(p) for p in given[: args.n]], made) for row in both if row is not None]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    st.load_pairs(args.out)  # the file reads back as pairs
    score = sentiment_scorer()
    report = {
        "machine": machine_info("cpu", args.threads),
        "args": vars(args) | {"out": str(args.out)},
        "instructions": instructions,
        "pairs_written": len(rows),
        "self_pairs": len(made),
        "dropped_empty": len(prompts) - len(made),
        "mean_sentiment": {side: sum(score([r[side] for r in made])) / max(1, len(made)) for side in ("positive", "negative")},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(report | {"machine": None}, indent=1))
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

"""Build the example comparison report on SmolLM2 with the bundled behaviour sets.

Every bundled behaviour is split by prompt into train pairs (75%) and held-out
pairs (25%). A mean_diff vector is extracted from each train split at every
layer, plus a pca_diff sentiment vector (do the methods agree?), and
``steering compare`` measures them all, with the AUROC of each vector on the
held-out sentiment pairs (so no vector is scored on its own training pairs)
and an interpolation from sentiment to formality.

    python scripts/compare_demo.py [--out .demo/compare] [--model smollm2-135m-instruct]

Takes a few minutes on 2 CPU cores; run it under ``flock /tmp/steering-heavy.lock``
on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import steering as st
from steering.experiments.cli import main as cli

BEHAVIOURS = ("sentiment", "formality", "refusal", "truthfulness", "confidence")


def split_by_prompt(pairs: list[st.ContrastPair], held_out: float, seed: int) -> tuple[list[st.ContrastPair], list[st.ContrastPair]]:
    """Train / held-out pairs with no prompt in both (pairs without a prompt count as their own)."""
    keys = sorted({p.prompt or p.positive for p in pairs})
    random.Random(seed).shuffle(keys)
    test_keys = set(keys[: max(1, round(held_out * len(keys)))])
    train = [p for p in pairs if (p.prompt or p.positive) not in test_keys]
    test = [p for p in pairs if (p.prompt or p.positive) in test_keys]
    return train, test


def write_pairs(pairs: list[st.ContrastPair], path: Path) -> Path:
    lines = [json.dumps({"prompt": p.prompt, "positive": p.positive, "negative": p.negative}) for p in pairs]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".demo/compare", type=Path)
    parser.add_argument("--model", default=st.DEFAULT_MODEL)
    parser.add_argument("--seed", default=0, type=int)
    args = parser.parse_args()
    vectors_dir = args.out / "vectors"
    vectors_dir.mkdir(parents=True, exist_ok=True)
    model, tok = st.load_model(args.model)
    paths = []
    for name in BEHAVIOURS:
        train, test = split_by_prompt(st.load_pairs(name), 0.25, args.seed)
        write_pairs(test, vectors_dir / f"{name}_heldout.jsonl")
        methods = ("mean_diff", "pca_diff") if name == "sentiment" else ("mean_diff",)
        for method in methods:
            vec = st.extract(model, tok, train, layers=None, method=method)
            label = name if method == "mean_diff" else f"{name}_{method}"
            paths.append(vec.save(vectors_dir / f"{label}.safetensors"))
            print(f"extracted {label}: {len(train)} train pairs, {len(test)} held out")
    return cli(
        [
            "compare",
            "vectors=[" + ",".join(str(p) for p in paths) + "]",
            f"out={args.out / 'report'}",
            f"data={vectors_dir / 'sentiment_heldout.jsonl'}",
            f"model={args.model}",
            "interpolate.a=sentiment",
            "interpolate.b=formality",
            "interpolate.layers=[12]",
            "interpolate.scorers=[projection,sentiment]",
            f"seed={args.seed}",
        ]
    )


if __name__ == "__main__":
    raise SystemExit(main())

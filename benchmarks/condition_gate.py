"""The CAST gate alone, variant by variant: which condition direction, fitting data and threshold leave harmless prompts off?

The condition is "the instruction is harmful" (Arditi et al.'s splits in
../shared/data/refusal_direction). For each variant it does what
`steering.conditions.find_condition` does (same split of the fitting prompts,
`CONDITION_METHODS`, `cosine_scores`, `best_threshold`, the layer with the
best held-out balanced accuracy), then reports the chosen gate's on-rate on the
val splits (harmful_val 39, harmless_val first 512; what choices were made
on) and on the test splits (first 160 of each; never used to fit or choose).
No generation: the identical-output share of `conditional.py` is at least
1 - (harmless test on-rate), since a row whose gate is off is exactly unsteered.

Prompt means are read once per split with `prompt_means` (as the gate reads
them) and can be kept in ``--cache`` (npz per split) for re-runs.

Example:
    .venv/bin/python benchmarks/condition_gate.py --cache /tmp/gate-cache
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from _common import ROOT, machine_info, write_results

SPLITS = {
    "harmful_train": 260,
    "harmless_train": 1024,
    "harmful_val": 39,
    "harmless_val": 512,
    "harmful_test": 160,
    "harmless_test": 160,
}
# name: (method, harmful fit, harmless fit, max_fpr, centre); centre "mid": scores of x - (mean_pos + mean_neg) / 2
VARIANTS: dict[str, tuple[str, int, int, float | None, bool]] = {
    "mean_diff 128+128 (before)": ("mean_diff", 128, 128, None, False),
    "mean_diff 260+1024": ("mean_diff", 260, 1024, None, False),
    "mean_diff 260+1024 centred": ("mean_diff", 260, 1024, None, True),
    "mean_diff 260+1024 max_fpr 0.01": ("mean_diff", 260, 1024, 0.01, False),
    "probe 128+128": ("probe", 128, 128, None, False),
    "probe 260+260": ("probe", 260, 260, None, False),
    "probe 260+1024": ("probe", 260, 1024, None, False),
    "probe 260+1024 centred": ("probe", 260, 1024, None, True),
    "probe 260+1024 max_fpr 0.01": ("probe", 260, 1024, 0.01, False),
}


def _instructions(name: str, n: int) -> list[str]:
    data = json.loads((ROOT.parent / "shared" / "data" / "refusal_direction" / "splits" / f"{name}.json").read_text())
    return [item["instruction"] for item in data][:n]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--layers", default="2,4,6,8,10,12,14,16,18,20", help="condition layers searched")
    p.add_argument("--cache", default=None, help="folder for the prompt means (npz per split), reused when present")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    import steering as st
    from steering.conditions import CONDITION_METHODS, best_threshold, cosine_scores, prompt_means

    started = time.time()
    layers = [int(x) for x in args.layers.split(",")]
    model, tok = st.load_model(args.model)
    means: dict[str, dict[int, Any]] = {}
    for name, n in SPLITS.items():
        path = Path(args.cache) / f"{name}.npz" if args.cache else None
        if path is not None and path.is_file():
            saved = np.load(path)
            means[name] = {i: torch.from_numpy(saved[str(i)]).double() for i in layers}
            continue
        means[name] = {i: m.double() for i, m in prompt_means(model, tok, _instructions(name, n), layers).items()}
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(path, **{str(i): m.float().numpy() for i, m in means[name].items()})

    def on_rate(x: Any, direction: Any, centre: Any, cut: float, above: bool) -> float:
        scores = cosine_scores(x - centre, direction).numpy()
        return float(((scores > cut) if above else (scores < cut)).mean())

    results: dict[str, Any] = {}
    for label, (method, n_pos, n_neg, max_fpr, centred) in VARIANTS.items():
        rng = np.random.default_rng(0)  # the split find_condition draws (seed 0, held_out 0.25)
        split = []
        for n in (n_pos, n_neg):
            order, k = rng.permutation(n), max(1, round(0.25 * n))
            split.append((order[k:], order[:k]))
        (pos_fit, pos_test), (neg_fit, neg_test) = split
        rows = []
        for layer in layers:
            pos, neg = means["harmful_train"][layer][:n_pos], means["harmless_train"][layer][:n_neg]
            direction = CONDITION_METHODS[method](pos[pos_fit], neg[neg_fit])
            centre = (pos[pos_fit].mean(0) + neg[neg_fit].mean(0)) / 2 if centred else torch.zeros_like(direction)
            sp, sn = cosine_scores(pos - centre, direction).numpy(), cosine_scores(neg - centre, direction).numpy()
            cut, above, fit_acc = best_threshold(sp[pos_fit], sn[neg_fit], max_fpr=max_fpr)
            on_pos = on_rate(pos[pos_test], direction, centre, cut, above)
            on_neg = on_rate(neg[neg_test], direction, centre, cut, above)
            row: dict[str, Any] = dict(layer=layer, threshold=cut, above=above, fit_accuracy=fit_acc)
            row.update(held_out_accuracy=0.5 * (on_pos + 1 - on_neg), held_out_pos_rate=on_pos, held_out_neg_rate=on_neg)
            for split_name in ("val", "test"):
                for side in ("harmful", "harmless"):
                    row[f"{side}_{split_name}"] = on_rate(means[f"{side}_{split_name}"][layer], direction, centre, cut, above)
            rows.append(row)
        best = max(rows, key=lambda r: (r["held_out_accuracy"], r["fit_accuracy"], -r["layer"]))
        results[label] = {"chosen": best, "rows": rows}
        print(
            f"{label:34s} layer {best['layer']:2d}  val on harmful {best['harmful_val']:.3f} harmless {best['harmless_val']:.3f}"
            f"  test on harmful {best['harmful_test']:.3f} harmless {best['harmless_test']:.3f}",
            flush=True,
        )
    payload = {
        "benchmark": "condition_gate",
        "machine": machine_info("cpu", args.threads),
        "args": vars(args),
        "splits": SPLITS,
        "variants": {k: dict(zip(("method", "harmful_fit", "harmless_fit", "max_fpr", "centred"), v)) for k, v in VARIANTS.items()},
        "results": results,
        "seconds": round(time.time() - started, 1),
    }
    print("wrote", write_results("condition_gate", payload, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

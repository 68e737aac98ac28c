"""Independent re-check of a sentiment run's automatic choice on held-out prompts and text.

Issue 14's goal is measured here, not by the run that chose: the chosen cells
of a ``steering run`` folder (``summary.json``) are applied by a forward hook
written in this file (``output + coef * direction`` at each chosen layer,
plain ``model.generate``, no `steering.steer`), generations come from 120
prompts the search never saw (``benchmarks/data/sentiment_check_prompts.txt``, 30
written for this check, and ``sentiment_check_prompts_more.txt``, 90 written later in
the same three forms; ``--prompts`` chooses other files, e.g. the first alone as the
checks before 2026-12-02 did) and are scored with vaderSentiment called directly.
Side effects are recomputed on other text: the true statements of RepE's
``facts_true_false.csv`` (shared data) read as raw documents from BOS
(perplexity ratio, KL per token), newly repetitive generations (distinct-2 <
0.5) and two-choice MMLU accuracy on items the run did not use (offset 200).
The prompting baseline (the run's instructions) is measured the same way. The
swing comes with a 95 % bootstrap interval over the prompts (120 prompts leave
about +-0.1 around it, 30 about +-0.18).

    python benchmarks/sentiment_check.py outputs/measure/smollm2_auto [--max-new-tokens 32]
    python benchmarks/sentiment_check.py RUN --prompts benchmarks/data/sentiment_check_prompts.txt  # the 30 alone

Writes ``benchmarks/results/sentiment-check-<model>-<date>.json`` with the machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
import re
import time
from pathlib import Path
from typing import Any

import torch
from _common import RESULTS, ROOT, machine_info
from omegaconf import OmegaConf
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

import steering as st

SHARED = ROOT.parent / "shared" / "data"
DATA = ROOT / "benchmarks" / "data"


def _layers_module(model: Any) -> Any:
    inner = model.model
    return inner.language_model.layers if hasattr(inner, "language_model") else inner.layers


class AddHook:
    """``output + coef * direction`` at some decoder layers' outputs (this check's own steering)."""

    def __init__(self, model: Any, directions: dict[int, torch.Tensor], coef: float) -> None:
        self.handles = []
        for layer, direction in directions.items():
            delta = (coef * direction).to(next(model.parameters()).dtype)

            def hook(_module: Any, _inputs: Any, output: Any, delta: torch.Tensor = delta) -> Any:
                if isinstance(output, tuple):
                    return (output[0] + delta, *output[1:])
                return output + delta

            self.handles.append(_layers_module(model)[layer].register_forward_hook(hook))

    def __enter__(self) -> AddHook:
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self.handles:
            handle.remove()


def prompt_ids(tok: Any, prompt: str) -> list[int]:
    if getattr(tok, "chat_template", None):
        return list(
            tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=True, add_generation_prompt=True, return_dict=False)
        )
    return list(tok(prompt)["input_ids"])


@torch.no_grad()
def generate(model: Any, tok: Any, prompts: list[str], max_new_tokens: int, batch: int = 10) -> list[str]:
    out = []
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    for start in range(0, len(prompts), batch):  # left-padded batches, HF's own position handling
        rows = [prompt_ids(tok, p) for p in prompts[start : start + batch]]
        width = max(map(len, rows))
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
        out += [tok.decode(row[width:], skip_special_tokens=True) for row in gen]
    return out


def distinct2(text: str) -> float | None:
    words = re.findall(r"\w+|[^\w\s]", text.lower())
    grams = list(zip(words, words[1:]))
    return len(set(grams)) / len(grams) if grams else None


@torch.no_grad()
def raw_logprobs(model: Any, tok: Any, sentences: list[str]) -> list[torch.Tensor]:
    rows = []
    for sentence in sentences:
        ids = tok(sentence)["input_ids"]
        start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        if ids[0] != start:  # read as a document from its start token, also where the tokenizer adds none
            ids = [start, *ids]
        logits = model(torch.tensor([ids])).logits[0, :-1].double()
        rows.append((torch.log_softmax(logits, -1), torch.tensor(ids[1:])))
    return rows


@torch.no_grad()
def mmlu_accuracy(model: Any, tok: Any, items: list[dict[str, str]]) -> float:
    right = 0
    for item in items:
        ids = prompt_ids(tok, item["prompt"])
        ids += tok("(" if getattr(tok, "chat_template", None) else " (", add_special_tokens=False)["input_ids"]
        logits = model(torch.tensor([ids])).logits[0, -1]
        letter = {}
        opening = "(" if getattr(tok, "chat_template", None) else " ("
        for x in "AB":
            full = tok(opening + x, add_special_tokens=False)["input_ids"]
            if full[:-1] != tok(opening, add_special_tokens=False)["input_ids"]:
                raise SystemExit(f"{opening + x!r} is not {opening!r} plus one letter token for this tokenizer")
            letter[x] = full[-1]
        right += bool(logits[letter[item["correct"][1]]] > logits[letter[item["incorrect"][1]]])
    return right / len(items)


def mean_interval(values: list[float], resamples: int = 10_000, seed: int = 0) -> list[float]:
    """95 % percentile-bootstrap interval of the mean of ``values`` (prompts resampled, fixed seed)."""
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(values, k=len(values))) / len(values) for _ in range(resamples))
    return [round(means[int(0.025 * resamples)], 4), round(means[int(0.975 * resamples) - 1], 4)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--neutral", type=int, default=60)
    parser.add_argument("--mmlu", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--prompts",
        type=Path,
        nargs="+",
        default=[DATA / "sentiment_check_prompts.txt", DATA / "sentiment_check_prompts_more.txt"],
        help="held-out prompt files, one prompt a line (default: both bundled files, 120 prompts)",
    )
    parser.add_argument("--out", type=Path, default=None, help="results file (default: results/sentiment-check-<model>-<date>.json)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    missing = [str(path) for path in args.prompts if not path.is_file()]
    if missing:
        raise SystemExit(f"--prompts: no such file: {', '.join(missing)}")
    prompts = [line.strip() for path in args.prompts for line in path.read_text().splitlines() if line.strip()]
    twice = sorted({p for p in prompts if prompts.count(p) > 1})
    if twice:
        raise SystemExit(f"--prompts {' '.join(map(str, args.prompts))}: {len(twice)} prompt(s) occur twice, e.g. {twice[0]!r}")
    summary = json.loads((args.run / "summary.json").read_text())
    config = (args.run / "config.yaml").read_text()
    model, tok = st.load_model(summary["model"])
    model.eval()
    vector = st.SteeringVector.load(args.run / summary["vector"], model)
    with (SHARED / "repe/facts/facts_true_false.csv").open() as handle:
        neutral = [row["statement"] for row in csv.DictReader(handle) if row["label"] == "1"][: args.neutral]
    mmlu = json.loads((SHARED / "caa/test/mmlu/mmlu.json").read_text())[200 : 200 + args.mmlu]
    vader = SentimentIntensityAnalyzer()
    start = time.perf_counter()

    plain_texts = generate(model, tok, prompts, args.max_new_tokens)
    plain_lp = raw_logprobs(model, tok, neutral)
    plain_nll = -sum(float(lp.gather(1, t[:, None]).sum()) for lp, t in plain_lp)
    tokens = sum(len(t) for _, t in plain_lp)
    plain_mmlu = mmlu_accuracy(model, tok, mmlu)

    def measure(texts: list[str], steered_lp: list[Any] | None, accuracy: float | None) -> dict[str, Any]:
        scores = [vader.polarity_scores(t)["compound"] for t in texts]
        base = [vader.polarity_scores(t)["compound"] for t in plain_texts]
        newly = sum(1 for t, p in zip(texts, plain_texts) if (distinct2(t) or 1) < 0.5 and (distinct2(p) or 1) >= 0.5)
        out: dict[str, Any] = {"sentiment": sum(scores) / len(scores), "degenerate": newly / len(texts)}
        out["per_prompt_changes"] = [round(s - b, 4) for s, b in zip(scores, base)]
        if steered_lp is not None:
            nll = -sum(float(lp.gather(1, t[:, None]).sum()) for lp, t in steered_lp)
            kl = sum(float((p.exp() * (p - q)).sum()) for (p, _), (q, _) in zip(plain_lp, steered_lp))
            out.update(raw_neutral_ppl=math.exp((nll - plain_nll) / tokens), raw_kl=kl / tokens)
        if accuracy is not None:
            out.update(mmlu=accuracy, mmlu_drop=plain_mmlu - accuracy)
        out["examples"] = texts[:3]
        return out

    results: dict[str, Any] = {"unsteered": measure(plain_texts, None, plain_mmlu)}
    for direction, choice in summary["directions"].items():
        if choice.get("best_layer") is None:
            results[direction] = {"status": choice["status"]}
            continue
        if choice.get("mode", "add") != "add" or choice.get("apply_to", summary.get("apply_to", "all")) != "all":
            # This check's own hook adds a vector at every token; other operations are not re-checked.
            results[direction] = {"status": f"not re-checked: mode {choice.get('mode')}, apply_to {choice.get('apply_to')}"}
            continue
        chosen = st.SteeringVector.load(args.run / choice["vector"], model) if "vector" in choice else vector
        layers = [choice["best_layer"]] if isinstance(choice["best_layer"], int) else list(choice["best_layer"])
        directions = {i: chosen.directions[i] for i in layers}
        with AddHook(model, directions, float(choice["best_coef"])):
            texts = generate(model, tok, prompts, args.max_new_tokens)
            steered = raw_logprobs(model, tok, neutral)
            accuracy = mmlu_accuracy(model, tok, mmlu)
        results[direction] = {"cell": choice["window"], "coef_per_layer": choice["best_coef"], **measure(texts, steered, accuracy)}
    for direction, instruction in dict(OmegaConf.load(args.run / "config.yaml").data.get("instructions") or {}).items():
        texts = generate(model, tok, [f"{instruction}\n\n{p}" for p in prompts], args.max_new_tokens)
        results[f"prompting_{direction}"] = {"instruction": instruction, **measure(texts, None, None)}
    swing = swing_ci95 = None
    if "sentiment" in results.get("positive", {}) and "sentiment" in results.get("negative", {}):
        swing = results["positive"]["sentiment"] - results["negative"]["sentiment"]
        # Paired over prompts: each prompt's positive minus negative score (the unsteered score cancels).
        per_prompt = [a - b for a, b in zip(results["positive"]["per_prompt_changes"], results["negative"]["per_prompt_changes"])]
        swing_ci95 = mean_interval(per_prompt)
    payload = {
        "machine": machine_info("cpu", args.threads),
        "run": str(args.run),
        "model": summary["model"],
        "run_runtime_s": summary.get("runtime_s"),
        "check_runtime_s": round(time.perf_counter() - start, 1),
        "run_budget": summary.get("budget"),
        "swing": swing,
        "swing_ci95": swing_ci95,
        "prompts": len(prompts),
        "prompt_files": [
            str(path.resolve().relative_to(ROOT)) if path.resolve().is_relative_to(ROOT) else path.name for path in args.prompts
        ],
        "neutral_sentences": len(neutral),
        "mmlu_items": len(mmlu),
        "results": results,
        "run_config": config,
    }
    stamp = time.strftime("%Y-%m-%d")
    path = args.out or RESULTS / f"sentiment-check-{Path(summary['model']).name}-{stamp}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps({k: v for k, v in payload.items() if k not in ("run_config", "machine")}, indent=1)[:4000])
    print(f"written to {path}")


if __name__ == "__main__":
    main()

"""``steering run``: sweep layers and strengths, measure effects and side effects, pick the best.

The Hydra app (`main`) composes ``conf/run/config.yaml`` with the command line
and calls `run`, which is plain Python and takes any composed config:

1. check the config and load the data (bad input fails before the model loads);
2. load the model once, write the model's own pairs if ``data.self_pairs``
   asks, and extract a vector at every layer the grid needs, in one pass over
   the pairs per method and data of the grid;
3. measure the baseline and every (method, data, mode, apply_to, layer window, coef) cell, appending to
   ``metrics.csv`` as each finishes (`experiments.sweep`);
4. choose the best cell per direction within the side-effect budget and
   write ``summary.json``, the figures and ``report.html``.

A ``probe`` task instead fits a probe per layer (no steering); a
``condition`` task finds the condition layer and threshold of conditional
steering (`steering.conditions.find_condition`) from two prompt files and
writes ``condition.safetensors`` and the gate's held-out accuracy per layer. Everything
goes to ``out_dir`` (Hydra's run folder by default); a Ctrl-C keeps the
measured cells and still writes the summary and report.

Example:
    >>> from experiments.run import compose_run, run
    >>> cfg = compose_run(["experiment=sentiment_sweep", "out_dir=/tmp/run"])  # doctest: +SKIP
    >>> run(cfg)["best_layer"]  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

import steering as st
from steering.hooks import Site, resolve_layers
from steering.vectors import Read, atomic_write, swap_letters

from . import plots
from .config import conf_dir, config_yaml, load_kwargs
from .metrics import METRICS, Context, load_eval_data, split_pairs
from .metrics.text import make_scorer
from .report import write_report
from .results import MetricsWriter
from .schema import check, migrate_renamed, register_schema
from .summary import condition_summary, letter_counts, probe_summary, sweep_summary, vector_file, write_summary
from .sweep import CellRunner, SweepResult, check_choice, grid, grid_axes, plan_rows, run_sweep, serial_cells, vector_keys

log = logging.getLogger(__name__)

register_schema()  # before @hydra.main composes: config.yaml's first default is run_schema


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run_conf_dir() -> Path:
    """``conf/run``: the run configs and their groups.

    They sit in a folder of their own because Hydra treats ``key=value`` as a
    group choice whenever a group named ``key`` is on the search path; groups
    ``model/``, ``data/`` and ``method/`` beside ``extract.yaml`` would turn
    ``steering extract model=...`` into a group override.
    """
    return conf_dir() / "run"


def compose_run(overrides: Sequence[str] = ()) -> DictConfig:
    """Compose ``conf/run/config.yaml`` with ``overrides`` outside a Hydra app (tests, notebooks).

    Overrides mean what they mean on the command line (no extra quoting).
    """
    from hydra import compose, initialize_config_dir

    register_schema()
    with initialize_config_dir(config_dir=str(run_conf_dir()), version_base="1.3", job_name="steering_run"):
        return compose(config_name="config", overrides=list(overrides))


def _pairs(cfg: DictConfig) -> tuple[list[st.ContrastPair], list[st.ContrastPair]]:
    try:
        pairs = st.load_pairs(cfg.data.path)
    except st.DatasetError as exc:
        raise st.DatasetError(f"data.path={cfg.data.path}: {exc}") from None
    kept, held = split_pairs(pairs, float(cfg.data.holdout), int(cfg.seed))
    if cfg.data.max_pairs is not None:
        kept = kept[: int(cfg.data.max_pairs)]
    if cfg.data.balance_letters:
        try:
            kept = [q for p in kept for q in (p, swap_letters(p))]
        except st.DatasetError as exc:
            raise st.DatasetError(f"data.balance_letters=true with data.path={cfg.data.path}: {exc}") from None
    return kept, held


def _preflight(cfg: DictConfig) -> None:
    """Fail now, not after the sweep, on a missing plotting library or a scorer that cannot be built."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise st.SteeringError("steering run draws its figures with matplotlib: pip install 'steering[plots]'")
    if "generation_score" in cfg.metric.use:
        make_scorer(cfg.metric)


def run(cfg: DictConfig, loaded: tuple[Any, Any] | None = None) -> dict[str, Any]:
    """Run the experiment ``cfg`` describes; return its summary.

    Args:
        cfg: a composed config (`compose_run`, or Hydra's).
        loaded: an already loaded ``(model, tokenizer)`` to use instead of ``cfg.model``.

    Raises:
        ConfigError, DatasetError, SteeringError: bad config or input, naming the key or file.
        KeyboardInterrupt: after writing the summary and report of what was measured.
    """
    start = time.perf_counter()
    migrate_renamed(cfg)  # old key names (issue 11), with a warning
    check(cfg)
    _preflight(cfg)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    yaml = config_yaml(cfg)
    atomic_write(out_dir / "config.yaml", lambda tmp: tmp.write_text(yaml, encoding="utf-8"), suffix=".yaml")
    seed_everything(int(cfg.seed))
    if cfg.task == "condition":
        return _condition(cfg, loaded, out_dir, yaml, start)
    pairs, held_out = _pairs(cfg)
    needs = set().union(*(METRICS[name].needs for name in cfg.metric.use))
    data = load_eval_data(cfg, needs, pairs, held_out)
    given = loaded
    if loaded is None:
        log.info("loading model %s", cfg.model.name)
        loaded = st.load_model(cfg.model.name, **load_kwargs(cfg.model))
    model, tokenizer = loaded
    ctx = Context(model, tokenizer, cfg, data)
    if cfg.task == "probe":
        return _probe(ctx, out_dir, yaml, start)
    runner: CellRunner = serial_cells
    if cfg.sweep.backend == "ray":
        from .ray_sweep import ray_runner

        sweep = cfg.sweep
        runner = ray_runner(int(sweep.workers), sweep.ray_address, int(sweep.cpus_per_worker), shipped=given)
    return _sweep(ctx, _data_sets(cfg, model, tokenizer, pairs), out_dir, yaml, start, runner)


def _data_sets(cfg: DictConfig, model: Any, tokenizer: Any, pairs: list[st.ContrastPair]) -> dict[str, list[st.ContrastPair]]:
    """The pairs each ``data.self_pairs`` value of the grid extracts from.

    ``none``: the given ``pairs``; ``add``: those and the model's own replies to
    their prompts under data.instructions; ``only``: the replies alone (written once for both).
    """
    wanted = grid_axes(cfg)["self_pairs"]
    if wanted == ["none"]:
        return {"none": pairs}
    prompts = list(dict.fromkeys(p.prompt for p in pairs if p.prompt))
    if not prompts:
        raise st.DatasetError(f"data.self_pairs={cfg.data.self_pairs} answers the pairs' prompts, and data.path={cfg.data.path} has none")
    instructions = cfg.data.instructions
    log.info("writing self pairs: %d prompts, %d tokens per reply", len(prompts), cfg.data.self_pairs_tokens)
    written = st.self_written_pairs(
        model,
        tokenizer,
        prompts,
        str(instructions.positive),
        str(instructions.negative),
        max_new_tokens=int(cfg.data.self_pairs_tokens),
        batch_size=int(cfg.eval.batch_size),
    )
    sets = {"none": pairs, "add": [*pairs, *written], "only": written}
    return {value: sets[value] for value in wanted}


def _sweep(
    ctx: Context, data: dict[str, list[st.ContrastPair]], out_dir: Path, yaml: str, start: float, runner: CellRunner
) -> dict[str, Any]:
    cfg = ctx.cfg
    windows = grid(cfg, ctx.model)
    rows = plan_rows(cfg, windows)
    layers = sorted({i for window in windows for i in window})
    axes = grid_axes(cfg)
    # The affine modes read the reference mean the vector file carries.
    reference = any(mode.startswith("affine") for mode in axes["mode"])
    keys = vector_keys(cfg)
    vectors: dict[tuple[str, str], st.SteeringVector] = {}
    for method, self_pairs in keys:
        pairs = data[self_pairs]
        log.info("extracting %s at %d layers from %d pairs (self_pairs=%s)", method, len(layers), len(pairs), self_pairs)
        vectors[method, self_pairs] = st.extract(
            ctx.model,
            ctx.tokenizer,
            pairs,
            layers,
            method=method,
            read=cast(Read, str(cfg.method.read)),
            site=cast(Site, str(cfg.sweep.site)),
            batch_size=int(cfg.method.batch_size),
            progress=bool(cfg.progress),
            corpus=st.load_lines(cfg.method.corpus) if method == "mean_centred" else None,
            reference=reference,
            options=OmegaConf.to_container(cfg.method.bipo) if method == "bipo" else None,  # type: ignore[arg-type]
        )
        vectors[method, self_pairs].save(out_dir / vector_file(keys, (method, self_pairs)))
    log.info("sweeping %d rows (%s) x their coefficients", len(rows), " x ".join(f"{len(v)} {k}" for k, v in axes.items()))
    result = run_sweep(ctx, vectors, rows, out_dir, runner)
    if not result.interrupted:
        check_choice(ctx, vectors, result, out_dir)
    # Several data sets mean self-written pairs, which carry no answer letter.
    letters = letter_counts(next(iter(data.values()))) if len(data) == 1 else None
    summary = sweep_summary(cfg, result, time.perf_counter() - start, letters, letter_counts(list(ctx.data.items)))
    write_summary(out_dir / "summary.json", summary)
    _sweep_report(ctx, result, summary, out_dir, yaml)
    log.info("results in %s", out_dir)
    if result.interrupted:
        raise KeyboardInterrupt
    return summary


def _sweep_report(ctx: Context, result: SweepResult, summary: dict[str, Any], out_dir: Path, yaml: str) -> None:
    if result.baseline is None or not result.cells:
        return
    effect, budget = summary["effect"], summary["budget"]
    figures_dir = out_dir / "plots"
    choices = summary["directions"]
    floor = 10 * float(ctx.cfg.select.min_delta)  # changes this small read as flat in the figures
    figures = [
        (
            plots.effect_vs_coef(figures_dir / "effect_vs_coef.png", result.baseline, result.cells, effect, budget, choices, floor),
            f"{effect} against coefficient per layer",
        ),
        (
            plots.heatmap(figures_dir / "heatmap.png", result.baseline, result.cells, effect, budget, choices, floor),
            f"layer x coefficient heatmap of {effect}",
        ),
    ]
    side = plots.side_effects(figures_dir / "side_effects.png", result.baseline, result.cells, effect, budget, choices, result.prompting)
    if side is not None:
        figures.append((side, "side effects against effect (P: prompting baseline)"))
    figures.append(
        (
            plots.pareto(figures_dir / "pareto.png", result.baseline, result.cells, result.prompting, effect, budget, summary["pareto"]),
            "effect against budget use, per direction: the Pareto front, the prompting baseline (P) and where the method lies",
        )
    )
    spread = plots.per_example(figures_dir / "per_example.png", result, effect, choices)
    if spread is not None:
        figures.append((spread, f"per-prompt change of {effect} at the chosen and prompting cells"))
    if "letter_balance" in summary:
        figures.append(
            (
                plots.letter_balance(figures_dir / "letter_balance.png", result.baseline, result.rows),
                "unsteered answer balance and steerability",
            )
        )
    if result.layers:
        figures.append((plots.probe_layers(figures_dir / "probe_layers.png", result.layers), "probe accuracy against layer"))
    write_report(
        out_dir / "report.html",
        summary,
        figures,
        yaml,
        baseline=result.baseline,
        cells=[*result.prompting, *result.cells],
        prompts=ctx.data.prompts,
        generations=result.generations,
        examples=int(ctx.cfg.report.examples),
    )


def _probe(ctx: Context, out_dir: Path, yaml: str, start: float) -> dict[str, Any]:
    cfg = ctx.cfg
    layers = resolve_layers(ctx.model, None if cfg.sweep.layers is None else list(cfg.sweep.layers))
    per_layer: dict[int, dict[str, float]] = {}
    with MetricsWriter(out_dir / "metrics.csv") as writer:
        for name in cfg.metric.use:
            if METRICS[name].kind != "layer":
                continue
            for layer, values in METRICS[name].fn(ctx, layers).items():
                per_layer.setdefault(layer, {}).update(values)
                writer.aggregate(str(layer), [layer], values)
    summary = probe_summary(cfg, per_layer, time.perf_counter() - start)
    write_summary(out_dir / "summary.json", summary)
    figure = plots.probe_layers(out_dir / "plots" / "probe_layers.png", per_layer)
    write_report(out_dir / "report.html", summary, [(figure, "probe accuracy and AUROC against layer")], yaml)
    return summary


def _condition(cfg: DictConfig, loaded: tuple[Any, Any] | None, out_dir: Path, yaml: str, start: float) -> dict[str, Any]:
    from steering.conditions import find_condition

    sides = {}
    for key in ("positives", "negatives"):
        try:
            prompts = st.load_prompts(cfg.condition[key])
        except st.DatasetError as exc:
            raise st.DatasetError(f"condition.{key}={cfg.condition[key]}: {exc}") from None
        sides[key] = prompts if cfg.condition.max_prompts is None else prompts[: int(cfg.condition.max_prompts)]
    model, tokenizer = loaded if loaded is not None else st.load_model(cfg.model.name, **load_kwargs(cfg.model))
    layers = resolve_layers(model, None if cfg.sweep.layers is None else list(cfg.sweep.layers))
    search = find_condition(
        model,
        tokenizer,
        sides["positives"],
        sides["negatives"],
        layers,
        held_out=float(cfg.condition.held_out),
        chat=cfg.eval.chat,
        seed=int(cfg.seed),
        method=cfg.condition.method,
        max_fpr=None if cfg.condition.max_fpr is None else float(cfg.condition.max_fpr),
    )
    per_layer: dict[int, dict[str, float]] = {}
    with MetricsWriter(out_dir / "metrics.csv") as writer:
        for row in search.rows:
            layer = int(row["layer"])
            per_layer[layer] = {f"condition_{k}": float(v) for k, v in row.items() if k != "layer"}
            writer.aggregate(str(layer), [layer], per_layer[layer])
    cond = search.condition
    cond.vector.select([cond.layer]).save(out_dir / "condition.safetensors")
    best = per_layer[cond.layer]
    summary = condition_summary(
        cfg,
        per_layer,
        {"layer": cond.layer, "threshold": cond.threshold, "above": cond.above, "vector": "condition.safetensors"},
        {"n_positives": len(sides["positives"]), "n_negatives": len(sides["negatives"])},
        time.perf_counter() - start,
    )
    write_summary(out_dir / "summary.json", summary)
    figure = plots.probe_layers(
        out_dir / "plots" / "condition_layers.png",
        per_layer,
        keys=("condition_held_out_accuracy", "condition_held_out_pos_rate", "condition_held_out_neg_rate"),
        title="condition gate on held-out prompts, per layer (accuracy, on-rate where it holds / not)",
    )
    write_report(out_dir / "report.html", summary, [(figure, "condition gate accuracy against layer")], yaml)
    log.info("condition: %s (held-out accuracy %.3f); results in %s", cond, best["condition_held_out_accuracy"], out_dir)
    return summary


# An absolute path: relative to this module, Hydra would look ``conf`` up as an importable
# package, which breaks when the working directory holds a ``conf/`` folder of its own.
@hydra.main(config_path=str(run_conf_dir()), config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """The Hydra app behind ``steering run``: one line per known error, unless debugging."""
    try:
        run(cfg)
    except st.SteeringError as exc:
        if os.environ.get("STEERING_DEBUG", "") not in ("", "0"):
            raise
        log.error("steering run: error: %s", " ".join(str(exc).split()))
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()

"""Typed schema of ``steering run`` configs, and the checks across fields.

The dataclasses below are registered in Hydra's ConfigStore as ``run_schema``,
the first entry of ``conf/run/config.yaml``'s defaults list, so every group file
and override is merged into typed nodes: a misspelt key or a value of the
wrong type fails with Hydra's own error naming the key, before any model
loads. `check` adds the rules a type cannot express (known choices, coef
grids, budgets naming measured values) and raises `ConfigError` naming the
config key and the bad value.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

from steering.apply import COEF_FREE_MODES, MODES
from steering.conditions import CONDITION_METHODS
from steering.hooks import APPLY_TO, SITES, ConfigError, SteeringError
from steering.hooks.renamed import RENAMED
from steering.vectors import METHODS, READS
from steering.vectors.bipo import BipoOptions

from .metrics import METRICS, produced_values

TASKS = ("sweep", "probe", "condition")
BACKENDS = ("serial", "ray")
SELF_PAIRS = ("none", "add", "only")  # data.self_pairs (null is none), one value or a list (a grid axis)


@dataclass
class ModelConf:
    """Which model to load (``steering.load_model``)."""

    name: str = "smollm2-135m-instruct"  # registry name, HF folder or .gguf file
    device: str | None = None  # cpu | cuda | auto (null = cpu)
    dtype: str | None = None  # float32 | bfloat16 | float16 (null = float32)
    device_map: Any = None  # auto | balanced | sequential | {module: device} (GPU index, cpu or disk); not with device
    max_memory: Any = None  # with device_map: {0: 20GiB, cpu: 64GiB}
    offload_folder: str | None = None  # with device_map: where "disk" blocks are written


@dataclass
class DataConf:
    """Contrastive pairs the vector is extracted from."""

    path: str = MISSING  # bundled set name, or a .jsonl / CAA .json file
    max_pairs: int | None = None  # use the first N pairs (after the holdout split)
    holdout: float = 0.0  # fraction of pairs kept out of extraction for evaluation
    # The prompting baseline: an instruction for the behaviour (positive) and its opposite (negative).
    instructions: dict[str, str] = field(default_factory=dict)
    balance_letters: bool = False  # A/B pairs: extract from each item and its A<->B swapped copy
    # Pairs the model writes itself: its replies to the pairs' prompts under instructions.positive
    # and .negative (steering.self_written_pairs), added to the pairs or used alone; a list
    # compares them as a grid axis (one vector per value), e.g. [add, only].
    self_pairs: Any = None  # null (= none) | add | only, or a list of them
    self_pairs_tokens: int = 32  # tokens per self-written reply


@dataclass
class MethodConf:
    """Extraction method (``vectors.METHODS``)."""

    name: str = "mean_diff"
    read: str = "last"  # last | mean: token(s) read from each text
    position: str | None = None  # deprecated name of read
    batch_size: int = 16
    corpus: str | None = None  # mean_centred: generic texts, one per line (file or bundled name)
    # BiPO's training settings (st.BipoOptions, its defaults), wherever bipo is extracted (method.name or sweep.methods).
    bipo: dict[str, Any] = field(default_factory=lambda: asdict(BipoOptions()))


@dataclass
class MetricConf:
    """Which registered metrics to measure, and which value to optimise."""

    use: list[str] = field(default_factory=lambda: ["generation_score", "neutral_ppl", "kl", "repetition"])
    effect: str = "sentiment"  # the value the choice maximises (+coef) / minimises (-coef)
    scorer: str = "sentiment"  # generation_score: sentiment | keyword | module:function
    keywords: list[str] = field(default_factory=list)  # for scorer=keyword


@dataclass
class SweepConf:
    """The grid: rows are method x mode x apply_to x layer window, columns coefficients (`experiments.sweep`)."""

    layers: list[int] | None = None  # first layer of each window (null = every layer)
    depth: list[float] | None = None  # first layers as fractions of the depth (wins over layers)
    refine: int = 0  # bisection rounds per row and sign where the budget binds
    window: list[int] = field(default_factory=lambda: [1])  # layers per cell; add splits the coef over them
    coefs: list[float] = field(default_factory=lambda: [-4.0, -2.0, 0.0, 2.0, 4.0])  # mode add: total per window
    methods: list[str] | None = None  # extraction methods compared (null = method.name alone)
    modes: list[str] = field(default_factory=lambda: ["add"])  # operations compared (steering.MODES)
    # Coefficients of the other modes, the value at each layer: clamp (x |v|), angular (degrees),
    # affine_add (x |v| past the reference mean); ablate and affine_ablate take none.
    mode_coefs: dict[str, list[float]] = field(
        default_factory=lambda: {
            "clamp": [-2.0, -1.0, 1.0, 2.0],
            "angular": [-30.0, -15.0, 15.0, 30.0],
            "affine_add": [-1.0, -0.5, 0.5, 1.0],
        }
    )
    site: str = "block_output"
    apply_to: Any = "all"  # all | prompt | generated, or a list of them (compared): the tokens steered
    positions: str | None = None  # deprecated name of apply_to
    backend: str = "serial"  # serial | ray: where the steered cells are measured
    workers: int = 2  # ray: actors, one model each
    cpus_per_worker: int = 1  # ray: CPUs (torch threads) per actor
    ray_address: str | None = None  # ray: a running cluster (null = $RAY_ADDRESS, else a local one)


@dataclass
class EvalConf:
    """Held-out material the metrics read."""

    prompts: str = "sentiment_eval_prompts.txt"  # generation prompts (file or bundled name)
    max_prompts: int | None = None
    max_new_tokens: int = 32
    batch_size: int = 40  # prompts per generate call / texts per scoring pass
    chat: bool | None = None  # chat template (null = when the tokenizer has one)
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    neutral: str = "neutral.txt"  # plain factual sentences for the side effects
    max_neutral: int | None = None
    neutral_prompt: str = "Tell me a fact."  # the user turn the neutral sentences answer
    ab_items: str | None = None  # CAA A/B test items (null = the held-out part of data.path)
    max_ab_items: int | None = None
    balance_letters: bool = False  # A/B test items: score each item and its A<->B swapped copy
    test_fraction: float = 0.3  # probe_accuracy: pairs held out to test each probe
    capability: str | None = None  # two-choice MMLU items (caa/test/mmlu/mmlu.json)
    max_capability: int | None = None


@dataclass
class ConditionConf:
    """task=condition: prompts where the condition holds and where it does not (CAST's condition point)."""

    positives: str | None = None  # text file (one prompt per line) or .json list
    negatives: str | None = None
    max_prompts: int | None = None  # first N of each
    held_out: float = 0.25  # fraction of each side kept out to measure the gate
    method: str = "probe"  # condition direction: probe | mean_diff (steering.conditions.CONDITION_METHODS)
    max_fpr: float | None = None  # threshold: most positives on with at most this share of fitting negatives on


@dataclass
class SelectConf:
    """How the best cell is chosen."""

    min_delta: float = 0.02  # smallest change of the effect that counts as steering


@dataclass
class ReportConf:
    """What the report shows."""

    examples: int = 3  # generations shown per chosen cell


@dataclass
class RunConf:
    """A whole ``steering run`` config."""

    name: str = "run"
    task: str = "sweep"  # sweep | probe | condition
    seed: int = 0
    out_dir: str = "${hydra:runtime.output_dir}"
    progress: bool = True
    model: ModelConf = field(default_factory=ModelConf)
    data: DataConf = field(default_factory=DataConf)
    method: MethodConf = field(default_factory=MethodConf)
    metric: MetricConf = field(default_factory=MetricConf)
    sweep: SweepConf = field(default_factory=SweepConf)
    eval: EvalConf = field(default_factory=EvalConf)
    budget: dict[str, float] = field(default_factory=lambda: {"neutral_ppl": 1.3, "kl": 0.3})
    select: SelectConf = field(default_factory=SelectConf)
    report: ReportConf = field(default_factory=ReportConf)
    condition: ConditionConf = field(default_factory=ConditionConf)


def register_schema() -> None:
    """Store `RunConf` as ``run_schema`` in Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="run_schema", node=RunConf)


def migrate_renamed(cfg: DictConfig) -> None:
    """Move the old keys ``method.position`` and ``sweep.positions`` to ``read`` / ``apply_to``, with a warning.

    Raises:
        ConfigError: if a config sets both names, to different values.
    """
    for group in ("method", "sweep"):
        node = cfg[group]
        for old, new in RENAMED.items():
            if old not in node or node[old] is None:
                continue
            if node[new] != getattr(_DEFAULTS[group], new) and node[new] != node[old]:
                raise ConfigError(f"{group}.{old} is the old name of {group}.{new}; give only {group}.{new}")
            warnings.warn(f"config key {group}.{old} is deprecated; use {group}.{new} (same values)", DeprecationWarning, stacklevel=2)
            node[new] = node[old]
            node[old] = None


_DEFAULTS = {"method": MethodConf(), "sweep": SweepConf()}


def _choice(key: str, value: Any, choices: tuple[str, ...] | list[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not one of: {', '.join(choices)}")


def _axis(key: str, value: Any, choices: tuple[str, ...] | list[str]) -> list[str]:
    """A grid axis (one value or a list): every value known, no repeats, not empty."""
    values = [str(v) for v in value] if OmegaConf.is_list(value) or isinstance(value, list) else [value]
    if not values or len(set(values)) != len(values):
        raise ConfigError(f"{key}={values} must be a non-empty list without repeats")
    for v in values:
        _choice(key, v, choices)
    return values


def _check_axes(cfg: DictConfig) -> None:
    """The method, mode and apply_to axes of the grid, and each mode's coefficients."""
    _axis("sweep.apply_to", cfg.sweep.apply_to, APPLY_TO)
    if cfg.sweep.methods is not None:
        _axis("sweep.methods", cfg.sweep.methods, sorted(METHODS))
    for mode in _axis("sweep.modes", cfg.sweep.modes, MODES):
        if mode == "add" or mode in COEF_FREE_MODES:
            continue
        coefs = list(cfg.sweep.mode_coefs.get(mode) or [])
        if not any(c != 0 for c in coefs) or len(set(coefs)) != len(coefs):
            raise ConfigError(
                f"sweep.mode_coefs.{mode}={coefs} must list coefficients without repeats, some non-zero (mode {mode} is swept)"
            )
        if mode == "angular" and any(abs(c) > 180 for c in coefs):
            raise ConfigError(f"sweep.mode_coefs.angular={coefs}: angles in degrees, within [-180, 180]")


def self_pairs_axis(value: Any) -> list[str]:
    """``data.self_pairs`` as the grid axis it is: a list of `SELF_PAIRS` values (null is ``none``)."""
    values = list(value) if OmegaConf.is_list(value) or isinstance(value, list) else [value]
    return ["none" if v is None else str(v) for v in values]


def _check_self_pairs(cfg: DictConfig) -> None:
    values = _axis("data.self_pairs", self_pairs_axis(cfg.data.self_pairs), SELF_PAIRS)
    if values == ["none"]:
        return
    given = f"data.self_pairs={cfg.data.self_pairs if len(values) == 1 else values}"
    if cfg.task != "sweep":
        raise ConfigError(f"{given} is for task=sweep (the pairs a sweep extracts from), not task={cfg.task}")
    for key in ("positive", "negative"):
        if not str(cfg.data.instructions.get(key) or "").strip():
            raise ConfigError(f"{given} writes replies under data.instructions.positive and .negative; data.instructions.{key} is not set")
    if cfg.data.balance_letters:
        raise ConfigError(f"{given} with data.balance_letters=true: self-written replies have no answer letter to balance")
    if cfg.data.self_pairs_tokens < 1:
        raise ConfigError(f"data.self_pairs_tokens={cfg.data.self_pairs_tokens} must be >= 1")


def _check_bipo(cfg: DictConfig) -> None:
    try:
        BipoOptions.from_mapping(OmegaConf.to_container(cfg.method.bipo))  # type: ignore[arg-type]
    except SteeringError as error:
        raise ConfigError(f"method.bipo: {error}") from None


def check(cfg: DictConfig) -> None:
    """Raise `ConfigError` for values that do not fit together (see module docs)."""
    _choice("task", cfg.task, TASKS)
    _choice("method.name", cfg.method.name, sorted(METHODS))
    _choice("method.read", cfg.method.read, READS)
    _choice("sweep.site", cfg.sweep.site, SITES)
    _check_axes(cfg)
    methods = [cfg.method.name] if cfg.sweep.methods is None else list(cfg.sweep.methods)
    if ("mean_centred" in methods) != (cfg.method.corpus is not None):
        raise ConfigError(
            "method=mean_centred needs method.corpus (generic texts, one per line)"
            if "mean_centred" in methods
            else f"method.corpus is for method=mean_centred, not {', '.join(methods)}"
        )
    _check_bipo(cfg)
    _choice("sweep.backend", cfg.sweep.backend, BACKENDS)
    if cfg.sweep.workers < 1 or cfg.sweep.cpus_per_worker < 1:
        raise ConfigError(f"sweep.workers={cfg.sweep.workers} and sweep.cpus_per_worker={cfg.sweep.cpus_per_worker} must be >= 1")
    if cfg.method.batch_size < 1 or cfg.eval.batch_size < 1:
        raise ConfigError("method.batch_size and eval.batch_size must be >= 1")
    if not 0.0 <= cfg.data.holdout < 1.0:
        raise ConfigError(f"data.holdout={cfg.data.holdout} must be in [0, 1)")
    _check_self_pairs(cfg)
    if not 0.0 < cfg.eval.test_fraction < 1.0:
        raise ConfigError(f"eval.test_fraction={cfg.eval.test_fraction} must be in (0, 1)")
    for key in ("data.max_pairs", "eval.max_prompts", "eval.max_neutral", "eval.max_ab_items", "eval.max_capability"):
        value = OmegaConf.select(cfg, key)
        if value is not None and value < 1:
            raise ConfigError(f"{key}={value} must be >= 1 (or null for all)")
    if cfg.eval.max_new_tokens < 1:
        raise ConfigError(f"eval.max_new_tokens={cfg.eval.max_new_tokens} must be >= 1")
    for name in cfg.metric.use:
        _choice("metric.use", name, sorted(METRICS))
    if cfg.task == "condition":
        for key in ("positives", "negatives"):
            if cfg.condition[key] is None:
                raise ConfigError(f"task=condition needs condition.{key} (a prompt file: one per line, or a .json list)")
        if not 0.0 < cfg.condition.held_out < 1.0:
            raise ConfigError(f"condition.held_out={cfg.condition.held_out} must be in (0, 1)")
        if cfg.condition.max_prompts is not None and cfg.condition.max_prompts < 2:
            raise ConfigError(f"condition.max_prompts={cfg.condition.max_prompts} must be >= 2 (or null for all)")
        _choice("condition.method", cfg.condition.method, list(CONDITION_METHODS))
        if cfg.condition.max_fpr is not None and not 0.0 <= cfg.condition.max_fpr < 1.0:
            raise ConfigError(f"condition.max_fpr={cfg.condition.max_fpr} must be in [0, 1) (or null: best balanced accuracy)")
        return
    if cfg.task == "probe":
        if "probe_accuracy" not in cfg.metric.use:
            raise ConfigError("task=probe needs 'probe_accuracy' in metric.use")
        return
    coefs = list(cfg.sweep.coefs)
    if not coefs or len(set(coefs)) != len(coefs):
        raise ConfigError(f"sweep.coefs={coefs} must be a non-empty list without repeats")
    if not any(c != 0 for c in coefs):
        raise ConfigError(f"sweep.coefs={coefs} has no non-zero coefficient to test")
    if not cfg.sweep.window or any(w < 1 for w in cfg.sweep.window):
        raise ConfigError(f"sweep.window={list(cfg.sweep.window)} must list window sizes >= 1")
    if cfg.sweep.refine < 0:
        raise ConfigError(f"sweep.refine={cfg.sweep.refine} must be >= 0")
    if cfg.sweep.depth is not None and (not cfg.sweep.depth or any(not 0.0 <= f < 1.0 for f in cfg.sweep.depth)):
        raise ConfigError(f"sweep.depth={list(cfg.sweep.depth)} must list fractions of the depth in [0, 1)")
    for key in cfg.data.instructions:
        _choice("data.instructions", key, ("positive", "negative"))
    if cfg.sweep.layers is not None and not cfg.sweep.layers:
        raise ConfigError("sweep.layers is an empty list; give layer indices or null for every layer")
    values = produced_values(cfg)
    if cfg.metric.effect not in values:
        raise ConfigError(
            f"metric.effect={cfg.metric.effect!r} is not measured by metric.use={list(cfg.metric.use)}; they measure: {', '.join(values)}"
        )
    for key in cfg.budget:
        if key not in values:
            raise ConfigError(f"budget.{key} names a value no metric in metric.use measures ({', '.join(values)})")

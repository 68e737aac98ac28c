"""Config composition: every experiment and group option composes; bad input fails clearly."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from steering.experiments.run import compose_run, run_conf_dir
from steering.experiments.schema import ConfigError, check

EXPERIMENTS = sorted(p.stem for p in (run_conf_dir() / "experiment").glob("*.yaml"))
GROUPS = {
    group: sorted(p.stem for p in (run_conf_dir() / group).glob("*.yaml")) for group in ("model", "data", "method", "metric", "debug")
}
REQUIRED = {"caa_ab": ["data.path=/data/generate_dataset.json"]}


def compose(*overrides: str):
    return compose_run(["out_dir=/tmp/unused", *overrides])


def test_the_shipped_experiments_are_there() -> None:
    assert {"sentiment_sweep", "caa_ab", "probe_layers"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_and_checks(name: str) -> None:
    cfg = compose(f"experiment={name}", *REQUIRED.get(name, []))
    check(cfg)
    assert cfg.name == name
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)  # nothing left as ???


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_with_debug(name: str) -> None:
    cfg = compose(f"experiment={name}", "debug=default", *REQUIRED.get(name, []))
    check(cfg)
    assert cfg.eval.max_new_tokens <= 8 and cfg.data.max_pairs <= 8


@pytest.mark.parametrize(("group", "option"), [(g, o) for g, options in GROUPS.items() for o in options])
def test_every_group_option_composes(group: str, option: str) -> None:
    overrides = [f"{group}={option}"]
    if group == "data" and option == "caa":
        overrides.append("data.path=/data/generate_dataset.json")
    if group == "metric" and option == "keyword":
        overrides.append("metric.keywords=[happy]")
    if group == "metric" and option == "ab":
        overrides.append("data.holdout=0.2")
    if group == "metric" and option == "probe":
        overrides.append("task=probe")
    cfg = compose(*overrides)
    check(cfg)


def test_experiment_overrides_its_groups() -> None:
    cfg = compose("experiment=caa_ab", "data.path=/x.json")
    assert cfg.metric.effect == "p_match" and "ab_pmatch" in cfg.metric.use
    assert compose("experiment=probe_layers").task == "probe"
    assert compose("experiment=sentiment_sweep").metric.effect == "sentiment"


def test_caa_without_its_data_path_names_the_key() -> None:
    cfg = compose("experiment=caa_ab")
    with pytest.raises(Exception, match="data.path"):
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)


@pytest.mark.parametrize(
    ("override", "error", "message"),
    [
        ("sweep.colors=[1]", ConfigCompositionException, "colors"),  # a misspelt key
        ("sweep.coefs=[a,b]", ConfigCompositionException, "coefs"),  # wrong type for the schema
        ("eval.max_new_tokens=many", ConfigCompositionException, "max_new_tokens"),
        ("experiment=no_such_experiment", MissingConfigException, "no_such_experiment"),
        ("method=no_such_method", MissingConfigException, "no_such_method"),
    ],
)
def test_bad_overrides_fail_with_hydra_errors(override: str, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        compose(override)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["task=train"], "task='train'"),
        (["method.name=magic"], "method.name='magic'"),
        (["method.name=mean_centred"], "needs method.corpus"),
        (["method.corpus=neutral.txt"], "method.corpus is for method=mean_centred"),
        (["task=condition"], "needs condition.positives"),
        (["task=condition", "condition.positives=a.txt", "condition.negatives=b.txt", "condition.method=pca"], "condition.method='pca'"),
        (["task=condition", "condition.positives=a.txt", "condition.negatives=b.txt", "condition.max_fpr=1.0"], "condition.max_fpr=1.0"),
        (["sweep.apply_to=middle"], "sweep.apply_to='middle'"),
        (["metric.use=[generation_score,telepathy]"], "telepathy"),
        (["metric.effect=joy"], "metric.effect='joy'"),
        (["+budget.sparkle=1.0"], "budget.sparkle"),
        (["sweep.coefs=[0]"], "no non-zero"),
        (["sweep.coefs=[1,1]"], "without repeats"),
        (["sweep.window=[0]"], "sweep.window"),
        (["sweep.layers=[]"], "sweep.layers"),
        (["data.holdout=1.5"], "data.holdout"),
        (["eval.max_prompts=0"], "eval.max_prompts"),
        (["task=probe"], "probe_accuracy"),
        (["sweep.apply_to=[all,middle]"], "sweep.apply_to='middle'"),
        (["sweep.apply_to=[all,all]"], "without repeats"),
        (["sweep.modes=[add,teleport]"], "sweep.modes='teleport'"),
        (["sweep.modes=[]"], "sweep.modes"),
        (["sweep.methods=[mean_diff,magic]"], "sweep.methods='magic'"),
        (["sweep.methods=[mean_diff,mean_centred]"], "needs method.corpus"),
        (["sweep.modes=[angular]", "sweep.mode_coefs.angular=[0]"], "sweep.mode_coefs.angular"),
        (["sweep.modes=[angular]", "sweep.mode_coefs.angular=[200]"], "within [-180, 180]"),
        (["sweep.modes=[clamp]", "~sweep.mode_coefs.clamp"], "sweep.mode_coefs.clamp"),
        (["data.self_pairs=more"], "data.self_pairs='more'"),
        (["data.self_pairs=[add,more]"], "data.self_pairs='more'"),
        (["data.self_pairs=[add,add]"], "data.self_pairs=['add', 'add'] must be a non-empty list without repeats"),
        (["data.self_pairs=[null,none]"], "without repeats"),
        (["data.self_pairs=[]"], "data.self_pairs=[] must be a non-empty list"),
        (["data.self_pairs=[null,only]", "~data.instructions.positive"], "data.self_pairs=['none', 'only'] writes replies"),
        (["method.bipo.epochs=0"], "method.bipo: bipo epochs must be >= 1, got 0"),
        (["method.bipo.epochs=2.5"], "method.bipo: bipo option epochs=2.5 must be an integer"),
        (["+method.bipo.sed=1"], "method.bipo: bipo has no option 'sed'"),
        (["data.self_pairs=add", "~data.instructions.positive"], "data.instructions.positive is not set"),
        (["data.self_pairs=only", "data.instructions.negative=' '"], "data.instructions.negative is not set"),
        (["data.self_pairs=add", "data.balance_letters=true"], "no answer letter"),
        (["data.self_pairs=add", "data.self_pairs_tokens=0"], "data.self_pairs_tokens=0"),
        (["data.self_pairs=add", "task=probe", "metric.use=[probe_accuracy]"], "is for task=sweep"),
    ],
)
def test_check_names_the_bad_key(overrides: list[str], message: str) -> None:
    cfg = compose(*overrides)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        check(cfg)


def test_budget_is_configurable() -> None:
    cfg = compose("budget.kl=0.5", "~budget.neutral_ppl")
    check(cfg)
    assert dict(cfg.budget) == {"kl": 0.5}


def test_schema_types_the_values() -> None:
    cfg = compose("sweep.coefs=[1,2]", "seed=3")
    assert cfg.sweep.coefs == [1.0, 2.0] and isinstance(cfg.sweep.coefs[0], float)
    with pytest.raises(ValidationError):
        cfg.seed = "three"


def test_conf_folder_layout() -> None:
    root = run_conf_dir()
    assert (root / "config.yaml").is_file()
    for group in ("model", "data", "method", "metric", "experiment", "debug"):
        assert list((root / group).glob("*.yaml")), group
    for path in (root / "experiment").glob("*.yaml"):
        assert path.read_text().startswith("# @package _global_"), path.name


def test_run_groups_do_not_capture_the_other_commands_keys() -> None:
    """``model=``, ``data=``, ``method=`` stay plain values for extract/generate (no group of that name beside them)."""
    from steering.experiments.config import compose_config

    cfg = compose_config("extract", ["model=/some/folder", "data=sentiment", "method=pca_diff", "out=v.safetensors"])
    assert (cfg.model, cfg.data, cfg.method) == ("/some/folder", "sentiment", "pca_diff")


@pytest.mark.parametrize(
    ("old", "new", "value"), [("method.position", "method.read", "mean"), ("sweep.positions", "sweep.apply_to", "prompt")]
)
def test_old_run_keys_are_accepted_with_a_warning(old: str, new: str, value: str) -> None:
    from steering.experiments.schema import migrate_renamed

    cfg = compose(f"{old}={value}")
    with pytest.warns(DeprecationWarning, match=new):
        migrate_renamed(cfg)
    assert OmegaConf.select(cfg, new) == value and OmegaConf.select(cfg, old) is None
    check(cfg)
    assert OmegaConf.to_yaml(cfg) == OmegaConf.to_yaml(_migrated(compose(f"{new}={value}")))


def _migrated(cfg):
    from steering.experiments.schema import migrate_renamed

    migrate_renamed(cfg)
    return cfg


@pytest.mark.parametrize(
    ("command", "old", "new", "value", "more"),
    [
        ("extract", "position", "read", "mean", ["out=x.safetensors"]),
        ("compare", "position", "read", "mean", ["out=x"]),
        ("generate", "positions", "apply_to", "generated", ["prompt=hi"]),
    ],
)
def test_old_command_keys_are_accepted_with_a_warning(command, old, new, value, more) -> None:
    from steering.experiments.config import compose_config

    with pytest.warns(DeprecationWarning, match=f"use {new}="):
        cfg = compose_config(command, [f"{old}={value}", *more])
    assert cfg[new] == value and old not in cfg

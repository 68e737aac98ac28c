"""Whole runs on a tiny model: every shipped experiment, the CLI, multirun, seeds, interruption."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from real_resources import shared_data

import steering as st
from steering.experiments import sweep as sweep_module
from steering.experiments.cli import main
from steering.experiments.config import compose_config
from steering.experiments.profiles import profile_from_run
from steering.experiments.results import read_metrics
from steering.experiments.run import compose_run, run, run_conf_dir
from steering.experiments.summary import load_choices
from steering.experiments.vector_commands import generate_command

EXPERIMENTS = sorted(p.stem for p in (run_conf_dir() / "experiment").glob("*.yaml"))
SWEEP_FILES = ["config.yaml", "vector.safetensors", "metrics.csv", "generations.jsonl", "summary.json", "report.html"]
SWEEP_PLOTS = ["effect_vs_coef.png", "heatmap.png", "side_effects.png"]


def _overrides(name: str, tiny_dir: Path, out: Path, ab_file: Path) -> list[str]:
    extra = [f"data.path={ab_file}"] if name == "caa_ab" else []
    if name == "condition_point":  # two prompt families instead of ../shared/data
        out.parent.mkdir(parents=True, exist_ok=True)
        for side, words in (("positives", "the sea and the boat"), ("negatives", "a cat sat on the mat")):
            (out.parent / f"{side}.txt").write_text("".join(f"{words} {k}\n" for k in range(8)))
            extra.append(f"condition.{side}={out.parent / f'{side}.txt'}")
    if name == "sentiment_auto":
        extra = [f"eval.capability={shared_data('caa', 'test', 'mmlu', 'mmlu.json')}"]
    return [f"experiment={name}", "debug=default", f"model.name={tiny_dir}", f"out_dir={out}", *extra]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_runs_and_writes_its_files(name: str, tiny_dir: Path, ab_file: Path, tmp_path: Path) -> None:
    out = tmp_path / name
    summary = run(compose_run(_overrides(name, tiny_dir, out, ab_file)))
    saved = json.loads((out / "summary.json").read_text())
    assert saved["name"] == name and saved["task"] == summary["task"]
    html = (out / "report.html").read_text()
    assert "<img" in html and "data:image/png;base64," in html and 'src="plots/' not in html  # self-contained
    assert "Config" in html and str(tiny_dir) in html
    assert (out / "config.yaml").read_text().startswith("name: " + name)
    if saved["task"] == "condition":
        assert (out / "plots" / "condition_layers.png").stat().st_size > 1000
        assert set(saved["layers"]) == {"0", "1"} and saved["best_layer"] == saved["condition"]["layer"]
        cond = saved["condition"]
        vector = st.SteeringVector.load(out / "condition.safetensors")
        assert vector.layers == [cond["layer"]] and -1 <= cond["threshold"] <= 1
        rows = read_metrics(out / "metrics.csv")
        assert {r["metric"] for r in rows} >= {"condition_held_out_accuracy", "condition_threshold"}
        return
    if saved["task"] == "probe":
        assert (out / "plots" / "probe_layers.png").stat().st_size > 1000
        assert isinstance(saved["best_layer"], int) and set(saved["layers"]) == {"0", "1"}
        return
    for file in SWEEP_FILES if name != "caa_ab" else [f for f in SWEEP_FILES if f != "generations.jsonl"]:
        assert (out / file).is_file(), file
    for plot in SWEEP_PLOTS:
        assert (out / "plots" / plot).stat().st_size > 1000, plot
    assert {"best_layer", "best_coef", "directions", "baseline", "budget", "side_effects"} <= set(saved)
    assert set(saved["directions"]) == {"positive", "negative"}
    rows = read_metrics(out / "metrics.csv")
    cells = {(r["layer"], r["coef"]) for r in rows if r["cell"] is not None and r["layer"] != "prompt"}
    assert cells == {(layer, coef) for layer in ("0", "1") for coef in (-2.0, 0.0, 2.0)}
    vector = st.SteeringVector.load(out / "vector.safetensors")
    assert vector.layers == [0, 1]


def test_caa_ab_reports_letter_balance_and_steerability(tiny_dir: Path, ab_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "ab"
    summary = run(compose_run([*_overrides("caa_ab", tiny_dir, out, ab_file), f"eval.ab_items={ab_file}"]))
    balance = summary["letter_balance"]
    assert set(balance) == {"A", "B"} and balance["A"] + balance["B"] == pytest.approx(1.0)
    assert set(summary["rows"]) == {"0", "1"} and {"slope", "wrong_sign"} <= set(summary["rows"]["0"])
    html = (out / "report.html").read_text()
    assert "answer balance" in html and f"A: {balance['A']:.3f}" in html
    assert (out / "plots" / "letter_balance.png").is_file()
    rows = read_metrics(out / "metrics.csv")
    assert any(r["metric"] == "slope" and r["coef"] is None for r in rows)


def test_caa_ab_on_real_caa_files(tiny_dir: Path, tmp_path: Path, caa_dir: Path) -> None:
    behaviour = "sycophancy"
    out = tmp_path / "caa"
    overrides = [
        "experiment=caa_ab",
        "debug=default",
        f"model.name={tiny_dir}",
        f"out_dir={out}",
        f"data.path={caa_dir / 'generate' / behaviour / 'generate_dataset.json'}",
        f"eval.ab_items={caa_dir / 'test' / behaviour / 'test_dataset_ab.json'}",
        "eval.max_ab_items=4",
        "data.max_pairs=4",
        "sweep.layers=[1]",
        "~budget.neutral_ppl",
        "metric.use=[ab_pmatch,kl]",
    ]
    summary = run(compose_run(overrides))
    assert 0.0 < summary["baseline"]["p_match"] < 1.0
    assert set(summary["letter_balance"]) == {"A", "B"}


def test_same_seed_same_numbers_when_sampling(tiny_dir: Path, tmp_path: Path) -> None:
    def once(folder: str, seed: int) -> list[tuple]:
        overrides = [
            "experiment=sentiment_sweep",
            "debug=default",
            f"model.name={tiny_dir}",
            f"out_dir={tmp_path / folder}",
            "eval.do_sample=true",
            "metric.scorer=builtins:len",
            "metric.effect=score",
            f"seed={seed}",
        ]
        run(compose_run(overrides))
        rows = read_metrics(tmp_path / folder / "metrics.csv")
        texts = (tmp_path / folder / "generations.jsonl").read_text()
        return [(r["layer"], r["coef"], r["metric"], r["value"]) for r in rows] + [texts]

    first, again, other = once("a", 0), once("b", 0), once("c", 1)
    assert first == again
    assert first != other  # the seed really drives the sampling


def test_interrupted_sweep_keeps_the_measured_cells(tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = sweep_module.measure

    def measure(ctx, cell):
        calls["n"] += 1
        if calls["n"] == 6:  # baseline, 2 prompting cells, 2 grid cells, then Ctrl-C
            raise KeyboardInterrupt
        return real(ctx, cell)

    monkeypatch.setattr(sweep_module, "measure", measure)
    out = tmp_path / "stopped"
    with pytest.raises(KeyboardInterrupt):
        run(compose_run(["experiment=sentiment_sweep", "debug=default", f"model.name={tiny_dir}", f"out_dir={out}"]))
    rows = read_metrics(out / "metrics.csv")
    assert sorted({r["cell"] for r in rows}) == [0, 1, 2, 3, 4]  # baseline, prompting cells and two grid cells made it
    summary = json.loads((out / "summary.json").read_text())
    # planned: baseline, 2 prompting cells, 2 rows x 2 coefs
    assert summary["interrupted"] is True and summary["grid"]["measured"] == 5 and summary["grid"]["planned"] == 7
    assert "interrupted" in (out / "report.html").read_text()


def _tiny_sweep(tiny_dir: Path, out: Path) -> list[str]:
    """A sentiment sweep on the tiny model, scored by text length so that every cell is in budget."""
    return [
        "experiment=sentiment_sweep",
        "debug=default",
        f"model.name={tiny_dir}",
        f"out_dir={out}",
        "metric.scorer=builtins:len",
        "metric.effect=score",
        "budget.kl=100",
        "budget.neutral_ppl=100",
    ]


def test_generate_uses_the_runs_choice(tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "chosen"
    overrides = [*_tiny_sweep(tiny_dir, out), "select.min_delta=0"]
    summary = run(compose_run(overrides))
    model, tok = st.load_model(tiny_dir)
    choices = load_choices(out, model)
    assert [c.direction for c in choices] == ["positive", "negative"]
    on = summary["directions"]["positive"]
    assert choices[0].coef == on["best_coef"] and choices[0].vector.layers == [on["best_layer"]]
    cfg = compose_config(
        "generate", [f"model={tiny_dir}", f"vector={out}", "prompt=Tell me about the sea", "max_new_tokens=8", "compare=true"]
    )
    results = generate_command(cfg)
    for c in choices:
        want = st.generate(model, tok, "Tell me about the sea", c.vector, c.coef, max_new_tokens=8, apply_to=c.apply_to)
        assert results[c.coef] == want
    assert results[0.0] == st.generate(model, tok, "Tell me about the sea", max_new_tokens=8)
    printed = capsys.readouterr().out
    assert f"positive: layer {on['window']}" in printed


def test_generate_with_a_folder_that_is_not_a_run(tmp_path: Path, tiny_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["generate", f"model={tiny_dir}", f"vector={tmp_path}", "prompt=hi"])
    assert code == 1
    assert "has no summary.json" in capsys.readouterr().err


def test_cli_run_writes_to_the_hydra_run_dir(tiny_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli_run"
    code = main(["run", "experiment=sentiment_sweep", "debug=default", f"model.name={tiny_dir}", f"hydra.run.dir={out}"])
    assert code == 0
    assert (out / "summary.json").is_file() and (out / "report.html").is_file()
    assert (out / ".hydra" / "overrides.yaml").is_file()


def test_cli_multirun_over_methods(tiny_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "multi"
    code = main(
        [
            "run",
            "-m",
            "experiment=sentiment_sweep",
            "debug=default",
            f"model.name={tiny_dir}",
            "method=mean_diff,pca_diff",
            f"hydra.sweep.dir={out}",
        ]
    )
    assert code == 0
    summaries = sorted(out.glob("*/summary.json"))
    assert len(summaries) == 2
    methods = sorted(json.loads(p.read_text())["method"] for p in summaries)
    assert methods == ["mean_diff", "pca_diff"]
    vectors = [st.SteeringVector.load(p.parent / "vector.safetensors") for p in summaries]
    assert not torch.equal(vectors[0].directions[0], vectors[1].directions[0])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sweep.colours=[1]"], "colours"),
        (["experiment=nope"], "nope"),
        (["experiment=sentiment_sweep", "data.path=/no/such/pairs.jsonl"], "/no/such/pairs.jsonl"),
        (["experiment=sentiment_sweep", "metric.effect=joy"], "metric.effect='joy'"),
        (["experiment=sentiment_sweep", "eval.prompts=/no/such/prompts.txt"], "eval.prompts=/no/such/prompts.txt"),
        (["experiment=sentiment_sweep", "metric.scorer=no_such_module_xyz:score", "metric.effect=score"], "cannot import"),
        (["experiment=caa_ab", "data.path=sentiment", "data.holdout=0", "data.balance_letters=false"], "eval.ab_items"),
        (["experiment=caa_ab", "data.path=sentiment", "data.holdout=0"], "data.balance_letters=true"),
    ],
)
def test_cli_run_errors_name_the_problem(
    args: list[str], message: str, tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["run", *args, f"model.name={tiny_dir}", f"hydra.run.dir={tmp_path / 'bad'}"])
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    assert message in captured.out + captured.err
    assert not (tmp_path / "bad" / "vector.safetensors").exists()  # failed before any work


def test_balanced_test_items_need_both_options(tiny_dir: Path, ab_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "no_options.json"
    bad.write_text(json.dumps([{"question": "Yes or no?", "answer_matching_behavior": "(A)", "answer_not_matching_behavior": "(B)"}]))
    with pytest.raises(SystemExit):
        main(
            [
                "run",
                "experiment=caa_ab",
                f"data.path={ab_file}",
                f"eval.ab_items={bad}",
                f"model.name={tiny_dir}",
                f"hydra.run.dir={tmp_path / 'bad'}",
            ]
        )
    captured = capsys.readouterr()
    assert f"eval.balance_letters=true with eval.ab_items={bad}" in captured.out + captured.err
    assert not (tmp_path / "bad" / "vector.safetensors").exists()


def test_run_folders_feed_behaviour_profiles(tiny_dir: Path, tmp_path: Path) -> None:
    """`steering compare profiles=[<run folders>]` reads what a sweep's summary.json holds."""
    out = tmp_path / "profiled"
    overrides = _tiny_sweep(tiny_dir, out)
    summary = run(compose_run(overrides))
    model, behaviour, effect, _ = profile_from_run(out)
    assert (model, behaviour) == (str(tiny_dir), "sentiment")
    assert effect == pytest.approx(summary["best_values"]["score"] - summary["baseline"]["score"])


def test_flat_behaviour_is_reported_not_hidden(tiny_dir: Path, ab_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "flat"
    summary = run(compose_run([*_overrides("caa_ab", tiny_dir, out, ab_file), "select.min_delta=1.0"]))
    assert {d["status"] for d in summary["directions"].values()} <= {"no effect within budget", "no cell within budget"}
    html = (out / "report.html").read_text()
    assert "No cell steers this behaviour within the budget" in html
    assert "wrong_sign" in html


def test_generate_with_a_condition_run_matches_the_library(tiny_dir: Path, ab_file: Path, tmp_path: Path, capsys) -> None:
    """steering generate condition=<condition_point run> steers exactly when st.generate(condition=) does."""
    out = tmp_path / "cond"
    run(compose_run(_overrides("condition_point", tiny_dir, out, ab_file)))
    model, tok = st.load_model(str(tiny_dir))
    from steering.experiments.summary import load_condition

    condition = load_condition(out, model)
    vec_path = tmp_path / "up.safetensors"
    vec = st.extract(model, tok, [("the sea and the boat", "a cat sat on the mat")], layers=[0, 2])
    vec.save(vec_path)
    for prompt in ("the sea and the boat 3", "a cat sat on the mat 5"):
        capsys.readouterr()
        args = ["generate", f"model={tiny_dir}", f"vector={vec_path}", "coef=6", f"prompt={prompt}", "max_new_tokens=5", f"condition={out}"]
        assert main(args) == 0
        text = capsys.readouterr().out.strip()
        assert text == st.generate(model, tok, prompt, vec, 6.0, max_new_tokens=5, condition=condition).strip()
    with pytest.raises(st.SteeringError, match="not a condition run"):
        load_condition(_sweep_like(tmp_path), model)


def _sweep_like(tmp_path: Path) -> Path:
    folder = tmp_path / "sweep"
    folder.mkdir()
    (folder / "summary.json").write_text(json.dumps({"task": "sweep"}))
    return folder


def test_sweep_shows_prompting_pareto_and_per_prompt_results(tiny_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "evaluation"
    summary = run(compose_run([*_tiny_sweep(tiny_dir, out), "sweep.refine=1", "budget.kl=0.05"]))
    assert set(summary["prompting"]) == {"positive", "negative"}
    assert summary["instructions"]["positive"].startswith("Reply in a happy")
    assert set(summary["pareto"]) == {"positive", "negative"}
    rows = read_metrics(out / "metrics.csv")
    prompting = {r["coef"] for r in rows if r["layer"] == "prompt"}
    assert prompting == {1.0, -1.0}
    assert {"wrong_way", "delta_median", "degenerate"} <= {r["metric"] for r in rows}
    html = (out / "report.html").read_text()
    assert "Prompting baseline" in html and "Pareto front" in html and "prompting: positive instruction" in html
    assert (out / "plots" / "pareto.png").stat().st_size > 1000 and (out / "plots" / "per_example.png").stat().st_size > 1000


def test_capability_bound_sets_chosen_cells_aside(tiny_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "capability"
    mmlu = shared_data("caa", "test", "mmlu", "mmlu.json")
    overrides = [
        *_tiny_sweep(tiny_dir, out),
        "metric.use=[generation_score,neutral_ppl,kl,repetition,capability]",
        f"eval.capability={mmlu}",
        "budget.degenerate=1",  # every grid cell in the grid's budget: each gets picked in turn
        "+budget.capability_drop=-1",  # no cell can keep it: every pick is measured, then set aside
    ]
    summary = run(compose_run(overrides))
    assert {d["status"] for d in summary["directions"].values()} == {"no cell within budget"}
    assert summary["baseline"]["capability_drop"] == 0.0 and 0.0 <= summary["baseline"]["capability"] <= 1.0
    measured = {r["cell"] for r in read_metrics(out / "metrics.csv") if r["metric"] == "capability"}
    assert {0, 1, 2} <= measured and len(measured) == 3 + 4  # baseline, 2 prompting cells, then all 4 grid cells


def test_each_compared_combination_gets_its_best_cell_checked(tiny_dir: Path, tmp_path: Path) -> None:
    """by_axes gives each method's best cell within the whole budget: the choice check measures capability on each one's pick too."""
    out = tmp_path / "groups"
    overrides = [
        *_tiny_sweep(tiny_dir, out),
        "metric.use=[generation_score,neutral_ppl,kl,repetition,capability]",
        f"eval.capability={shared_data('caa', 'test', 'mmlu', 'mmlu.json')}",
        "eval.max_capability=8",
        "budget.degenerate=1",
        "+budget.capability_drop=1",  # every measured cell keeps it
        "sweep.methods=[mean_diff,pca_diff]",
        "sweep.layers=[1]",
        "sweep.coefs=[-2,-1,1,2]",
    ]
    summary = run(compose_run(overrides))
    groups = summary["by_axes"]
    assert [g["method"] for g in groups] == ["mean_diff", "pca_diff"]
    picks = {g[d]["cell"] for g in groups for d in ("positive", "negative")}  # every group has a pick per direction
    measured = {r["cell"] for r in read_metrics(out / "metrics.csv") if r["metric"] == "capability"}
    assert measured == {0, 1, 2} | picks and len(picks) == 4 < len(summary["grid"]["rows"]) * 4


def test_grid_is_the_product_of_its_axes_and_the_choice_keeps_the_budget(tiny_dir: Path, tmp_path: Path) -> None:
    """method x mode x apply_to x window x coef: every cell measured and labelled; the choice is the best cell in budget over all of them."""
    out = tmp_path / "axes"
    overrides = [
        *_tiny_sweep(tiny_dir, out),
        "sweep.layers=[1]",
        "sweep.methods=[mean_diff,pca_diff]",
        "sweep.modes=[angular,ablate]",
        "sweep.apply_to=[all,generated]",
        "sweep.mode_coefs.angular=[-20,20]",
        "budget.kl=0.095",  # binds on the tiny model: some cells in (KL 0.06-0.09), some out (0.10-0.16)
    ]
    summary = run(compose_run(overrides))
    rows = read_metrics(out / "metrics.csv")
    measured = [r for r in rows if r["cell"] not in (None, 0) and r["layer"] != "prompt" and r["metric"] == "score"]
    got = sorted((r["method"], r["mode"], r["apply_to"], r["layers"], r["coef"]) for r in measured)
    coefs = {"angular": (-20.0, 20.0), "ablate": (-1.0,)}  # ablate has no strength: one cell, recorded as -1
    want = sorted(
        (m, o, a, "1", c) for m in ("mean_diff", "pca_diff") for o in ("angular", "ablate") for a in ("all", "generated") for c in coefs[o]
    )
    assert got == want  # 2 x 2 x 2 rows x (2 or 1) coefs
    assert summary["grid"]["planned"] == 1 + 2 + len(want)  # baseline, prompting, grid
    assert {r["layer"] for r in measured} == {f"{w} {m} {o} {a}" for w, m, o, a in {(r["layers"], *r_axes(r)) for r in measured}}
    # The choice, recomputed from metrics.csv: per sign, the best score among cells within every budget limit.
    values: dict[int, dict[str, float]] = {}
    for r in rows:
        if r["cell"] not in (None, 0) and r["layer"] != "prompt":
            values.setdefault(r["cell"], {"coef": r["coef"]})[r["metric"]] = r["value"]
    budget = summary["budget"]
    inside = {i: v for i, v in values.items() if all(v[k] <= limit for k, limit in budget.items())}
    assert 0 < len(inside) < len(values), "the budget should bind"
    for direction, sign in (("positive", 1.0), ("negative", -1.0)):
        pool = {i: v for i, v in inside.items() if sign * v["coef"] > 0}
        best = max(pool, key=lambda i: sign * pool[i]["score"])
        choice = summary["directions"][direction]
        assert sign * values[choice["cell"]]["score"] == sign * pool[best]["score"]
        assert choice["within_budget"] and all(values[choice["cell"]][k] <= limit for k, limit in budget.items())
        row = next(r for r in measured if r["cell"] == choice["cell"])
        assert (choice["method"], choice["mode"], choice["apply_to"]) == r_axes(row)
        assert choice["vector"] == ("vector.safetensors" if choice["method"] == "mean_diff" else "vector-pca_diff.safetensors")
    assert (out / "vector-pca_diff.safetensors").is_file()
    assert len(summary["by_axes"]) == 8 and {g["mode"] for g in summary["by_axes"]} == {"angular", "ablate"}
    front = {i for idx in summary["pareto"].values() for i in idx}
    assert (
        front
        and front <= set(values)
        and front == {i for g in summary["by_axes"] for d in ("positive", "negative") for i in g[d]["on_front"]}
    )
    html = (out / "report.html").read_text()
    assert "By method and operation" in html and "pca_diff" in html
    # A run folder's choice steers with its own vector, mode and apply_to.
    model, tok = st.load_model(tiny_dir)
    on = summary["directions"]["positive"]
    cfg = compose_config("generate", [f"model={tiny_dir}", f"vector={out}", "prompt=Tell me about the sea", "max_new_tokens=8"])
    results = generate_command(cfg)
    chosen = st.SteeringVector.load(out / on["vector"]).select([on["best_layer"]])
    want = st.generate(
        model, tok, "Tell me about the sea", chosen, on["best_coef"], max_new_tokens=8, mode=on["mode"], apply_to=on["apply_to"]
    )
    assert results[on["best_coef"]] == want


def test_a_trained_method_is_a_grid_axis_like_the_others(tiny_dir: Path, tmp_path: Path) -> None:
    """sweep.methods=[mean_diff,bipo]: bipo's vector file is extract(method="bipo") with method.bipo's settings; its cells are measured."""
    out = tmp_path / "bipo"
    grid = ["sweep.layers=[1]", "sweep.methods=[mean_diff,bipo]", "sweep.coefs=[-1,1]", "method.bipo.seed=2", "method.bipo.epochs=2"]
    cfg = compose_run([*_tiny_sweep(tiny_dir, out), *grid])
    run(cfg)
    model, tok = st.load_model(tiny_dir)
    saved = st.SteeringVector.load(out / "vector-bipo.safetensors", model)
    pairs = st.load_pairs(cfg.data.path)[: int(cfg.data.max_pairs)]  # the sentiment sweep holds none out
    direct = st.extract(model, tok, pairs, [1], method="bipo", options={"seed": 2, "epochs": 2})
    assert saved.method == "bipo" and (saved.extra["bipo_epochs"], saved.extra["bipo_seed"]) == ("2", "2")
    torch.testing.assert_close(saved.directions[1], direct.directions[1])
    plain = st.SteeringVector.load(out / "vector.safetensors", model)  # the first method's
    torch.testing.assert_close(plain.directions[1], st.extract(model, tok, pairs, [1]).directions[1])
    cells = {(r["method"], r["coef"]) for r in read_metrics(out / "metrics.csv") if r["metric"] == "score" and r["cell"] not in (None, 0)}
    assert {("bipo", -1.0), ("bipo", 1.0), ("mean_diff", -1.0), ("mean_diff", 1.0)} <= cells


@pytest.mark.parametrize("how", ["add", "only"])
def test_self_written_pairs_are_what_the_sweep_extracts_from(tiny_dir: Path, tmp_path: Path, how: str) -> None:
    """data.self_pairs: the vector is extract() on the pairs plus (or instead of) self_written_pairs of their prompts."""
    out = tmp_path / how
    overrides = ["sweep.layers=[1]", "sweep.coefs=[-1,1]", "data.max_pairs=6", f"data.self_pairs={how}", "data.self_pairs_tokens=5"]
    cfg = compose_run([*_tiny_sweep(tiny_dir, out), *overrides])
    run(cfg)
    model, tok = st.load_model(tiny_dir)
    given = st.load_pairs(cfg.data.path)[:6]  # the sentiment sweep holds none out
    prompts = list(dict.fromkeys(p.prompt for p in given))
    instructions = cfg.data.instructions
    written = st.self_written_pairs(model, tok, prompts, instructions.positive, instructions.negative, max_new_tokens=5)
    pairs = [*given, *written] if how == "add" else written
    saved = st.SteeringVector.load(out / "vector.safetensors", model)
    assert saved.n_pairs == len(pairs) == (len(given) if how == "add" else 0) + len(prompts)
    torch.testing.assert_close(saved.directions[1], st.extract(model, tok, pairs, [1]).directions[1])


def test_the_data_is_a_grid_axis_too(tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """data.self_pairs=[null,add,only]: one vector per data, each extract() on its own pairs from replies written once;
    the rows, files, summary and report name the data, and a run folder's choice steers with its data's vector."""
    out = tmp_path / "data"
    calls: list[int] = []
    real = st.self_written_pairs
    monkeypatch.setattr(st, "self_written_pairs", lambda *a, **k: calls.append(1) or real(*a, **k))
    overrides = [
        "sweep.layers=[1]",
        "sweep.coefs=[-1,1]",
        "data.max_pairs=6",
        "data.self_pairs=[null,add,only]",
        "data.self_pairs_tokens=5",
    ]
    cfg = compose_run([*_tiny_sweep(tiny_dir, out), *overrides])
    summary = run(cfg)
    assert calls == [1]
    model, tok = st.load_model(tiny_dir)
    given = st.load_pairs(cfg.data.path)[:6]  # the sentiment sweep holds none out
    prompts = list(dict.fromkeys(p.prompt for p in given))
    instructions = cfg.data.instructions
    written = real(model, tok, prompts, instructions.positive, instructions.negative, max_new_tokens=5)
    sets = {"none": given, "add": [*given, *written], "only": written}
    files = {"none": "vector.safetensors", "add": "vector-self_pairs-add.safetensors", "only": "vector-self_pairs-only.safetensors"}
    assert summary["vectors"] == {f"mean_diff self_pairs={k}": f for k, f in files.items()}
    assert summary["grid"]["axes"]["self_pairs"] == ["none", "add", "only"]
    for key, pairs in sets.items():
        saved = st.SteeringVector.load(out / files[key], model)
        assert saved.n_pairs == len(pairs)
        torch.testing.assert_close(saved.directions[1], st.extract(model, tok, pairs, [1]).directions[1])
    measured = [
        r for r in read_metrics(out / "metrics.csv") if r["cell"] not in (None, 0) and r["layer"] != "prompt" and r["metric"] == "score"
    ]
    got = sorted((r["self_pairs"], r["layer"], r["coef"]) for r in measured)
    assert got == sorted((k, f"1 self_pairs={k}", c) for k in sets for c in (-1.0, 1.0))
    assert {g["self_pairs"] for g in summary["by_axes"]} == set(sets)
    choices = {c.direction: c for c in load_choices(out, model)}
    for direction, choice in summary["directions"].items():
        row = next(r for r in measured if r["cell"] == choice["cell"])
        assert choice["self_pairs"] == row["self_pairs"] and choice["vector"] == files[row["self_pairs"]]
        chosen = st.SteeringVector.load(out / files[row["self_pairs"]], model).select([1])
        torch.testing.assert_close(choices[direction].vector.directions[1], chosen.directions[1])
    html = (out / "report.html").read_text()
    assert "self_pairs=only" in html and "<th>self_pairs</th>" in html


def test_self_written_pairs_need_prompts(tiny_dir: Path, tmp_path: Path) -> None:
    no_prompts = tmp_path / "plain.jsonl"
    no_prompts.write_text('{"positive": "I love it.", "negative": "I hate it."}\n' * 3, encoding="utf-8")
    cfg = compose_run([*_tiny_sweep(tiny_dir, tmp_path / "out"), f"data.path={no_prompts}", "data.self_pairs=add"])
    with pytest.raises(st.DatasetError, match=f"data.self_pairs=add answers the pairs' prompts, and data.path={no_prompts} has none"):
        run(cfg)


def r_axes(row: dict) -> tuple[str, str, str]:
    assert row["self_pairs"] == "none"  # a grid that does not compare data
    return row["method"], row["mode"], row["apply_to"]


def test_caa_extraction_is_balanced_over_the_answer_letter(tiny_dir: Path, ab_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "balanced"
    summary = run(compose_run([*_overrides("caa_ab", tiny_dir, out, ab_file), "data.max_pairs=5"]))
    assert summary["extraction_letters"] == {"A": 5, "B": 5}  # each of 5 items as given and swapped
    tested = summary["test_letters"]
    assert set(tested) == {"A", "B"} and tested["A"] == tested["B"]  # scored as given and swapped too
    assert {"p_match_A", "p_match_B"} <= set(summary["baseline"])
    assert summary["steers"] == any(e["consistent"] for e in summary["letter_effects"].values())
    assert set(summary["letter_effects"]) == {d for d, c in summary["directions"].items() if c["status"] == "ok"}
    assert "Matching answer letter in the extraction pairs" in (out / "report.html").read_text()
    unbalanced = run(
        compose_run([*_overrides("caa_ab", tiny_dir, tmp_path / "as_given", ab_file), "data.max_pairs=5", "data.balance_letters=false"])
    )
    assert sum(unbalanced["extraction_letters"].values()) == 5

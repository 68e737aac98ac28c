"""The commands that make, use and inspect one vector: ``extract``, ``generate``, ``bake``, ``convert`` and ``info``.

Each takes a composed config (``conf/<command>.yaml``) and prints its result;
errors are raised and turned into one line by `experiments.cli`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from omegaconf import DictConfig, ListConfig, OmegaConf

import steering as st
from steering.hooks import ConfigError
from steering.vectors.distributed import is_main_process, local_device

from .config import load_kwargs


def _load(cfg: DictConfig):  # -> (model, tokenizer)
    return st.load_model(cfg.model, **load_kwargs(cfg))


def _layers(value: object) -> list[int]:
    """A ``layers=`` value (one index or a list; checked by `experiments.values`) as a list."""
    if isinstance(value, (ListConfig, list, tuple)):
        return [int(v) for v in value]
    return [int(cast(Any, value))]


def _bipo_options(cfg: DictConfig) -> dict[str, Any] | None:
    """``bipo=`` for ``method=bipo`` (checked by `st.BipoOptions`); refused with another method."""
    if cfg.bipo is not None and not isinstance(cfg.bipo, DictConfig):
        raise ConfigError(f"bipo={cfg.bipo!r}: a mapping of BiPO's settings, e.g. 'bipo={{seed: 1}}'")
    options = OmegaConf.to_container(cfg.bipo) if cfg.bipo is not None else {}
    assert isinstance(options, dict)
    if cfg.method != "bipo":
        if options:
            raise ConfigError(f"bipo={options} are BiPO's settings; method={cfg.method} takes none")
        return None
    return {str(k): v for k, v in options.items()}


def extract_command(cfg: DictConfig) -> Path:
    """Extract a vector from ``cfg.data`` and save it to ``cfg.out``.

    Under ``torchrun`` / ``accelerate launch`` the processes split the pairs
    (`steering.vectors.distributed`; ``device=cuda`` is each one's own GPU)
    and rank 0 alone writes the file.
    """
    out = Path(cfg.out)
    if out.suffix != ".safetensors":
        raise st.SteeringError(f"out={out}: the output file must end in .safetensors")
    pairs = st.load_pairs(cfg.data)
    model, tok = st.load_model(cfg.model, **load_kwargs(cfg, device=local_device(cfg.device)))
    vector = st.extract(
        model,
        tok,
        pairs,
        None if cfg.layers is None else _layers(cfg.layers),
        method=cfg.method,
        read=cfg.read,
        site=cfg.site,
        batch_size=int(cfg.batch_size),
        corpus=None if cfg.corpus is None else st.load_lines(cfg.corpus),
        reference=bool(cfg.reference),
        options=_bipo_options(cfg),
    )
    if not is_main_process():
        return out
    vector.save(out)
    norms = ", ".join(f"{i}: {n:.3f}" for i, n in vector.norms().items())
    print(f"saved {out} ({vector.method}, {vector.n_pairs} pairs, {vector.site}, read={vector.read}; norms {norms})")
    return out


def generate_command(cfg: DictConfig) -> dict[float, str]:
    """Print the completion of ``cfg.prompt`` at each coefficient (and unsteered with compare).

    With ``vector=<run folder>`` of ``steering run``, each direction the run
    chose (behaviour on, then off) is generated at its chosen layer(s), coef
    and apply_to; ``coef``, ``layers`` and ``apply_to`` are then not used.
    ``condition=<run folder>`` of ``steering run experiment=condition_point``
    steers only if the prompt meets the condition that run chose.
    """
    model, tok = _load(cfg)
    if cfg.condition is not None:
        from .summary import load_condition

        gen_condition = {"condition": load_condition(cfg.condition, model, allow_model_mismatch=bool(cfg.allow_model_mismatch))}
    else:
        gen_condition = {}
    if cfg.vector is not None and Path(str(cfg.vector)).is_dir():
        return _generate_from_run(cfg, model, tok, gen_condition)
    vector = None
    if cfg.vector is not None:
        vector = st.SteeringVector.load(cfg.vector, model, allow_model_mismatch=bool(cfg.allow_model_mismatch))
    coefs = [float(c) for c in cfg.coef] if isinstance(cfg.coef, ListConfig) else [float(cfg.coef)]
    if vector is None:
        coefs = [0.0]
    elif cfg.compare and 0.0 not in coefs:
        coefs = [0.0, *coefs]
    gen: dict[str, Any] = {"do_sample": bool(cfg.do_sample)}
    if cfg.do_sample:
        gen.update(temperature=float(cfg.temperature), top_p=float(cfg.top_p))
    results: dict[float, str] = {}
    for coef in coefs:
        import torch

        torch.manual_seed(int(cfg.seed))
        steered = vector if coef != 0.0 else None
        if steered is not None and cfg.layers is not None:
            steered = steered.select(_layers(cfg.layers))
        text = st.generate(
            model,
            tok,
            str(cfg.prompt),
            steered,
            coef,
            max_new_tokens=int(cfg.max_new_tokens),
            apply_to=cfg.apply_to,
            mode=cfg.mode,
            chat=cfg.chat,
            check_model=not cfg.allow_model_mismatch,  # the load above already let it through
            **(gen_condition if steered is not None else {}),
            **gen,
        )
        results[coef] = text
        label = "unsteered" if coef == 0.0 else f"coef {coef:+g}"
        if len(coefs) > 1:
            print(f"--- {label} ---")
        print(text.strip())
    return results


def _generate_from_run(cfg: DictConfig, model: Any, tok: Any, gen_condition: dict[str, Any]) -> dict[float, str]:
    import torch

    from .summary import load_choices

    choices = load_choices(cfg.vector, model, allow_model_mismatch=bool(cfg.allow_model_mismatch))
    gen: dict[str, Any] = {"do_sample": bool(cfg.do_sample)}
    if cfg.do_sample:
        gen.update(temperature=float(cfg.temperature), top_p=float(cfg.top_p))
    runs: list[tuple[str, st.SteeringVector | None, float, str, str]] = [("unsteered", None, 0.0, "all", "add")] if cfg.compare else []
    for c in choices:
        if cfg.mode != "add" and cfg.mode != c.mode:  # "add" is the default: the run's choice decides
            raise ConfigError(f"mode={cfg.mode} but the run at {cfg.vector} chose mode {c.mode} for {c.direction}; leave mode out")
        label = f"{c.direction}: layer {c.label}, coef {c.coef:+g} per layer, mode {c.mode}, apply_to {c.apply_to}"
        runs.append((label, c.vector, c.coef, c.apply_to, c.mode))
    results: dict[float, str] = {}
    for label, vector, coef, apply_to, mode in runs:
        torch.manual_seed(int(cfg.seed))
        text = st.generate(
            model,
            tok,
            str(cfg.prompt),
            vector,
            coef,
            max_new_tokens=int(cfg.max_new_tokens),
            apply_to=apply_to,
            mode=mode,
            chat=cfg.chat,
            check_model=not cfg.allow_model_mismatch,
            **(gen_condition if vector is not None else {}),
            **gen,
        )
        results[coef] = text
        print(f"--- {label} ---")
        print(text.strip())
    return results


def bake_command(cfg: DictConfig) -> Path:
    """Bake ``cfg.vector`` into ``cfg.model``'s weights and write the folder ``cfg.out`` (`steering.bake`)."""
    model, tok = _load(cfg)
    layers = None if cfg.layers is None else _layers(cfg.layers)
    out = st.bake(
        model,
        str(cfg.vector),
        float(cfg.coef),
        out=str(cfg.out),
        tokenizer=tok,
        mode=cfg.mode,
        layers=layers,
        check_model=not cfg.allow_model_mismatch,
    )
    what = f"coef {float(cfg.coef):+g}" if cfg.mode == "add" else "ablated direction"
    print(f"baked {cfg.vector} ({cfg.mode}, {what}, layers {layers or 'all'}) into {out}")
    return out


def convert_command(cfg: DictConfig) -> Path:
    """Convert ``cfg.input`` to ``cfg.out`` (formats by suffix, see ``conf/convert.yaml``)."""
    from steering.interop import read_any_vector, write_any_vector

    source, out = Path(str(cfg.input)), Path(str(cfg.out))
    if source.resolve() == out.resolve():
        raise st.SteeringError(f"out={out}: same file as input; write the converted vector elsewhere")
    model = st.load_model(cfg.model)[0] if cfg.model is not None else None
    foreign = {k: cfg[k] for k in ("model_id", "num_layers", "layer", "model_suffix") if cfg[k] is not None}
    vector = read_any_vector(source, model, allow_model_mismatch=bool(cfg.allow_model_mismatch), **foreign)
    if cfg.layers is not None:
        vector = vector.select(_layers(cfg.layers))
    if cfg.format is not None:
        return _convert_to_format(cfg, vector, model, out)
    options: dict[str, Any] = {}
    if out.suffix == ".gguf":
        options["llama_cpp"] = bool(cfg.llama_cpp)
    elif out.suffix != ".safetensors" and cfg.model_suffix is not None:
        options["model_suffix"] = str(cfg.model_suffix)
    written = write_any_vector(vector, out, **options)
    print(f"wrote {written} (layers {vector.layers}, model {vector.model})")
    return written


def _convert_to_format(cfg: DictConfig, vector: st.SteeringVector, model: Any, out: Path) -> Path:
    """``format=lm-eval``: lm-evaluation-harness' ``steered`` file, with hookpoints from the model."""
    from steering.interop import export_lm_eval

    if cfg.format != "lm-eval":
        raise st.SteeringError(f"format={cfg.format}: unknown format; choose lm-eval, or leave it null to go by the suffix of out")
    if model is None:
        if vector.model == "unknown":
            raise st.SteeringError("format=lm-eval names hookpoints by the model's modules: pass model=")
        model = st.load_model(vector.model)[0]
    written = export_lm_eval(vector, out, model, coef=float(cfg.coef), mode=cfg.mode, check_model=not cfg.allow_model_mismatch)
    print(f"wrote {written} (lm-eval steered, {cfg.mode}, coef {float(cfg.coef):+g}, layers {vector.layers}, model {vector.model})")
    return written


def info_command(path: str | Path) -> None:
    """Print a vector file's metadata, layers and norms (.safetensors, .gguf or .pt)."""
    from steering.interop import read_any_vector

    vector = read_any_vector(path)
    print(f"file: {path}")
    for key, value in sorted(vector.metadata().items()):
        print(f"  {key}: {value}")
    print(f"layers ({len(vector.layers)}): {vector.layers}")
    print("norms:")
    for layer, norm in vector.norms().items():
        print(f"  layer {layer:>3}: {norm:.4f}")

"""The ``steering`` command: ``steering <command> key=value ...``.

Commands compose ``conf/<command>.yaml`` with Hydra overrides. Errors print one
line and exit non-zero; set ``STEERING_DEBUG=1`` (or pass ``--debug``) for the
traceback.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable, Sequence

USAGE = """usage: steering <command> [key=value ...]

commands:
  extract   contrastive pairs -> steering vector (.safetensors)
            steering extract data=sentiment layers=[10,12,14] method=mean_diff out=v.safetensors
  generate  steered completion of a prompt
            steering generate vector=v.safetensors coef=4 prompt="Tell me about your day." compare=true
  info      metadata, layers and norms of a vector file (.safetensors, .gguf, .pt)
            steering info v.safetensors
  bake      a Hugging Face model folder with a vector folded into its weights
            steering bake vector=v.safetensors coef=4 layers=[12] out=baked-model
  convert   a vector to or from llama.cpp / repeng .gguf and CAA .pt
            steering convert input=v.safetensors out=v.gguf
  compare   cosines, layers, norms, AUROC, plots and report.html for vectors
            steering compare vectors=[a.safetensors,b.safetensors] out=cmp data=sentiment
  serve     OpenAI-compatible server; each request brings its own steering
            steering serve model=smollm2-135m-instruct vectors=./vectors host=127.0.0.1 port=8000
  run       sweep layers x coefs, measure effects and side effects, choose the best (Hydra app)
            steering run experiment=sentiment_sweep [-m method=mean_diff,pca_diff]

Overrides use Hydra syntax (key=value, lists as [a,b]); see conf/<command>.yaml.
Set STEERING_DEBUG=1 or pass --debug to see tracebacks."""


def _extract(args: Sequence[str]) -> None:
    from .config import compose_config
    from .vector_commands import extract_command

    extract_command(compose_config("extract", args))


def _generate(args: Sequence[str]) -> None:
    from .config import compose_config
    from .vector_commands import generate_command

    generate_command(compose_config("generate", args))


def _info(args: Sequence[str]) -> None:
    from .vector_commands import info_command

    paths = [a.split("=", 1)[1] if a.startswith("file=") else a for a in args]
    if len(paths) != 1:
        raise ValueError("info takes one vector file: steering info <file>.safetensors")
    info_command(paths[0])


def _bake(args: Sequence[str]) -> None:
    from .config import compose_config
    from .vector_commands import bake_command

    bake_command(compose_config("bake", args))


def _convert(args: Sequence[str]) -> None:
    from .config import compose_config
    from .vector_commands import convert_command

    convert_command(compose_config("convert", args))


def _compare(args: Sequence[str]) -> None:
    from .compare import compare_command
    from .config import compose_config

    compare_command(compose_config("compare", args))


def _serve(args: Sequence[str]) -> None:
    from .config import compose_config
    from .serve import serve_command

    serve_command(compose_config("serve", args))


def _run(args: Sequence[str]) -> None:
    # A real @hydra.main app (so -m multirun, --cfg job, hydra.* overrides work): it reads sys.argv.
    from .run import main as run_main

    if os.environ.get("STEERING_DEBUG", "") not in ("", "0"):
        os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    saved = sys.argv
    sys.argv = ["steering run", *args]
    try:
        run_main()
    finally:
        sys.argv = saved


COMMANDS: dict[str, Callable[[Sequence[str]], None]] = {
    "extract": _extract,
    "generate": _generate,
    "info": _info,
    "bake": _bake,
    "convert": _convert,
    "compare": _compare,
    "serve": _serve,
    "run": _run,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("STEERING_DEBUG", "") not in ("", "0") or "--debug" in args
    args = [a for a in args if a != "--debug"]
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"steering: unknown command {command!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    # Python hides DeprecationWarning outside __main__: show ours (old key names, issue 11) to CLI users.
    warnings.filterwarnings("default", message=r".* is deprecated; use ", category=DeprecationWarning)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # this tool never fetches from a hub
    # transformers' per-load progress bars would bury the one line a command prints.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    try:
        COMMANDS[command](rest)
    except KeyboardInterrupt:
        print(f"steering {command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit flush
        return 141
    except Exception as exc:  # one clear line for any failure, unless debugging
        if debug:
            raise
        print(f"steering {command}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    return 0


def _one_line(exc: Exception) -> str:
    """A one-line message for any error, phrased for the command line."""
    from omegaconf.errors import MissingMandatoryValue

    if isinstance(exc, MissingMandatoryValue):
        key = exc.full_key or "value"
        return f"missing required value {key!r}: add {key}=... to the command"
    return " ".join(str(exc).split()) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())

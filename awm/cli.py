"""The ``awm`` command: one subcommand per pipeline stage.

The registry below is explicit (no import side effects): each stage module defines
``add_arguments(parser)`` and ``run(args) -> int`` and is imported only when its command runs,
so ``awm --help`` stays fast. Exit codes: 0 ok, 1 failure, 2 usage error.

Every command also takes ``--debug`` (tracebacks; before or after the command name) and
``--no-progress`` (no progress bars, also in the processes it starts: ``AWM_NO_PROGRESS=1``);
an option the command does not know is reported with that command's usage.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from awm import __version__

# command -> (module, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "crawl": ("awm.acquire.crawl", "download originals from a Moebooru/Danbooru API into raw shards"),
    "ingest": ("awm.acquire.ingest", "turn a local folder of images into raw shards"),
    "split": ("awm.acquire.split", "split a folder of images into train/ and eval/, duplicates on one side"),
    "shard": ("awm.data.shard", "degrade HR into LR/HR pairs and write train/eval shards"),
    "train": ("awm.train.train", "train a model from pair shards (Accelerate, DDP, bf16, resume)"),
    "eval": ("awm.eval.evaluate", "evaluate models and baselines on eval shards into one table"),
    "score": ("awm.eval.score", "no-reference IQA scores of any folder of images"),
    "upscale": ("awm.upscale.infer", "tiled upscaling of images, folders or shards with any checkpoint"),
    "submit": ("awm.cluster.submit", "run any stage on SLURM (or locally) through submitit"),
    "launch-config": ("awm.launch", "print the path of a shipped Accelerate launch config (list them without NAME)"),
    "weights": ("awm.eval.weights", "list, stage and verify metric/backbone weights for offline nodes"),
    "niqe-fit": ("awm.eval.niqe", "fit an anime NIQE pristine model on HR images"),
    "report": ("awm.eval.report", "experiment table across training runs"),
    "sweep": ("awm.sweep.sweep", "grid/random search over train config keys: train + eval per point, resumable"),
    "convert": ("awm.models.checkpoint", "convert an AWM checkpoint to a BasicSR/spandrel-loadable file"),
    "export": ("awm.release.export", "a verified release: safetensors, ONNX, OpenModelDB entry, model card"),
    "demo": ("awm.demo", "the whole pipeline on built-in generated wallpapers"),
}

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults, except where there is none to show: a required option, a None or empty default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.required or action.default in (None, "", []):
            return action.help
        return super()._get_help_string(action)


def _stage_module(name: str):
    module_name = COMMANDS[name][0]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:
            return None
        raise


def _common_flags(p: argparse.ArgumentParser) -> None:
    """``--debug`` and ``--no-progress`` on a command (and its actions), unless it defines them itself."""
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _common_flags(child)
    if "--debug" not in p._option_string_actions:
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on failure")
    if "--no-progress" not in p._option_string_actions:
        p.add_argument("--no-progress", dest="progress", action="store_false", default=argparse.SUPPRESS,
                       help="no progress bars (logs only), e.g. for batch logs")


def _chosen(p: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The innermost parser that ``args`` went through (a command's action, e.g. ``weights list``)."""
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction) and getattr(args, action.dest or "", None) in action.choices:
            return _chosen(action.choices[getattr(args, action.dest)], args)
    return p


def build_parser(command: str | None = None) -> tuple[argparse.ArgumentParser, dict]:
    """The top-level parser; only ``command``'s module is imported to fill in its arguments.

    ``modules`` maps ``command`` to its module, and ``"parser:" + command`` to its subparser.
    """
    parser = argparse.ArgumentParser(
        prog="awm", formatter_class=_Formatter,
        description="AWM: anime-wallpaper super-resolution, from crawl to upscale.",
        epilog="Run 'awm COMMAND --help' for a command's options.")
    parser.add_argument("--version", action="version", version=f"awm {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on failure")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = {}
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=_Formatter)
        if name == command:
            mod = _stage_module(name)
            modules[name] = mod
            modules["parser:" + name] = p
            if mod is not None:
                mod.add_arguments(p)
                _common_flags(p)
    return parser, modules


def main(argv: list[str] | None = None) -> int:
    from awm.errors import ConfigError
    from awm.log import get_logger

    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if a in COMMANDS), None)
    parser, modules = build_parser(command)
    try:
        args, unknown = parser.parse_known_args(argv)
        if unknown:  # with the command's usage, not the top level's
            _chosen(modules.get(f"parser:{args.command}", parser), args).error("unrecognized arguments: " + " ".join(unknown))
    except SystemExit as e:
        return int(e.code or 0)
    if getattr(args, "progress", True) is False:
        os.environ["AWM_NO_PROGRESS"] = "1"
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    mod = modules.get(args.command)
    if mod is None:
        print(f"awm {args.command}: not available yet in awm {__version__}", file=sys.stderr)
        return EXIT_USAGE
    log = get_logger("awm.cli")
    try:
        return int(mod.run(args) or 0)
    except ConfigError as e:
        print(f"awm {args.command}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    except Exception as e:  # noqa: BLE001 - the CLI boundary turns failures into exit code 1
        if args.debug or os.environ.get("AWM_DEBUG"):
            raise
        log.error("%s failed: %s: %s (re-run with --debug for a traceback)", args.command,
                  type(e).__name__, e)
        return EXIT_FAIL

"""``awm launch-config``: Accelerate launch configurations shipped with the package, by name.

The files live here (package data) so that ``accelerate launch --config_file "$(awm launch-config
cpu-2proc)" -m awm train ...`` works from any directory and from an installed package; the
repository's top-level ``launch/`` holds links to them. Processes and precision only: training
hyperparameters live in the recipes.

A config that names another file by a relative path (DeepSpeed's ``deepspeed_config_file``,
which Accelerate opens relative to the working directory) is printed as a copy with that path
made absolute, under the AWM cache (``$XDG_CACHE_HOME/awm/launch``, default ``~/.cache``).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import yaml

from awm.errors import ConfigError
from awm.imageio import atomic_write_text

HERE = Path(__file__).parent
REFERENCES = ("deepspeed_config_file",)  # keys under deepspeed_config naming another shipped file


def names() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.yaml"))


def describe(name: str) -> str:
    """The file's first comment line: what the configuration is for."""
    first = (HERE / f"{name}.yaml").read_text().splitlines()[0]
    return first.lstrip("# ").strip()


def _cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "awm" / "launch"


def config_path(name: str) -> Path:
    """A path to configuration ``name`` that works from any directory (a name or ``NAME.yaml``)."""
    stem = Path(name).name.removesuffix(".yaml")
    src = HERE / f"{stem}.yaml"
    if not src.is_file():
        raise ConfigError("NAME", name, "one of " + ", ".join(names()))
    text = src.read_text()
    ds = (yaml.safe_load(text) or {}).get("deepspeed_config") or {}
    relative = {k: ds[k] for k in REFERENCES if isinstance(ds.get(k), str) and not os.path.isabs(ds[k])}
    if not relative:
        return src
    for key, value in relative.items():  # launch/ds-zero2.json -> <package>/launch/ds-zero2.json
        text = text.replace(f"{key}: {value}", f"{key}: {HERE / Path(value).name}")
    out = _cache() / src.name
    if not out.is_file() or out.read_text() != text:
        atomic_write_text(out, text)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", metavar="NAME",
                        help="configuration to print the path of (" + ", ".join(names()) + "); none: list them")


def run(args: argparse.Namespace) -> int:
    if args.name is None:
        for name in names():
            print(f"{name:20s} {describe(name)}")
        return 0
    print(config_path(args.name))
    return 0

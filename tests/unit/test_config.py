import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import pytest

from awm import config
from awm.config import check
from awm.errors import ConfigError


@dataclass
class Optim:
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])

    def __post_init__(self):
        check(0 < self.lr < 1, "lr", self.lr, "0 < lr < 1")


@dataclass
class Stage:
    name: str = "x"
    steps: int = 10
    precision: Literal["fp32", "bf16"] = "bf16"
    scales: list[int] = field(default_factory=lambda: [2, 4])
    optim: Optim = field(default_factory=Optim)
    note: str | None = None


def test_defaults_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("steps: 5\noptim:\n  lr: 0.001\n")
    cfg = config.load(Stage, p, ["optim.lr=2e-4", "scales=2", "precision=fp32", "note=hi"])
    assert cfg.steps == 5 and cfg.optim.lr == 2e-4 and cfg.scales == [2] and cfg.precision == "fp32"
    assert cfg.note == "hi"
    saved = config.save(cfg, tmp_path / "run" / "config.yaml")
    assert config.load(Stage, saved) == cfg
    assert config.digest(cfg) == config.digest(config.load(Stage, saved))


@pytest.mark.parametrize("override,key", [
    ("stepz=3", "stepz"),
    ("optim.lrr=3", "optim.lrr"),
    ("steps=abc", "steps"),
    ("precision=fp64", "precision"),
    ("optim.lr=5", "optim.lr"),
    ("scales=2,x", "scales[1]"),
])
def test_errors_name_the_key(override, key):
    with pytest.raises(ConfigError) as e:
        config.load(Stage, None, [override])
    assert e.value.key == key
    assert key in str(e.value) and "valid" in str(e.value)


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError, match="known keys are .*steps"):
        config.load(Stage, None, ["bogus=1"])


def test_bad_override_syntax():
    with pytest.raises(ConfigError):
        config.load(Stage, None, ["steps"])


def test_flags_roundtrip():
    import argparse

    parser = argparse.ArgumentParser()
    config.add_dataclass_arguments(parser, Stage)
    args = parser.parse_args(["--steps", "7", "--scales", "2,4"])
    cfg = config.from_args(Stage, args, ["name=y"])
    assert (cfg.steps, cfg.scales, cfg.name) == (7, [2, 4], "y")


def test_save_beside_writes_the_stage_config(tmp_path):
    cfg = config.load(Stage, None, ["steps=3"])
    p = config.save_beside(cfg, tmp_path / "out", "stage")
    assert p.name == "stage_config.yaml" and config.load(Stage, p) == cfg


def test_help_field_carries_help_and_copies_mutable_defaults():
    @dataclass
    class Opts:
        size: int = config.help_field("required, no default")
        tags: list = config.help_field("tags to keep", ["a"])
        name: str = config.help_field("a name", "x")

    a, b = Opts(size=1), Opts(size=2)
    a.tags.append("b")
    assert b.tags == ["a"] and a.name == "x"
    assert {f.name: f.metadata["help"] for f in dataclasses.fields(Opts)}["size"] == "required, no default"
    with pytest.raises(TypeError):
        Opts()


def test_a_positional_is_named_as_the_argument_not_a_config_key(tmp_path):
    """``awm ingest /typo``: the user typed an argument, SRC_DIR, not a config key 'src'."""
    from awm.acquire.ingest import IngestConfig

    with pytest.raises(ConfigError) as e:
        config.load(IngestConfig, None, [f"src={tmp_path / 'typo'}"])
    assert str(e.value).startswith("argument SRC_DIR: got ") and "config key" not in str(e.value)
    with pytest.raises(ConfigError, match="^config key 'near_dup'"):  # an option stays a config key
        config.load(IngestConfig, None, [f"src={tmp_path}", "near_dup=99"])

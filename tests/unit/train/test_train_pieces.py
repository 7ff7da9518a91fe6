"""Training pieces: recipes, learning-rate schedules, EMA, state discovery."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from awm.errors import ConfigError
from awm.train.config import RECIPES, load_config
from awm.train.ema import EMA, EMAConfig
from awm.train.images import to_float
from awm.train.schedule import lr_factor
from awm.train.state import COMPLETE, latest_state


def test_every_recipe_loads_and_tiny_cpu_is_cheap():
    names = sorted(p.stem for p in RECIPES.glob("*.yaml"))
    assert {"tiny-cpu", "rrdb-6b-x2", "rrdb-6b-x4", "grl-x4", "dat-x4", "hat-x4"} <= set(names)
    for n in names:
        cfg = load_config(n)
        assert cfg.name == n and cfg.data.patch % cfg.data.scale == 0
    tiny = load_config("tiny-cpu", ["steps=10", "data.batch_size=2"])
    assert tiny.model.arch == "compact" and tiny.data.scale == 2 and tiny.steps == 10
    assert tiny.loss.perceptual.vgg_weight == 0 and tiny.loss.perceptual.anime_weight == 0


def test_bad_config_names_the_key():
    with pytest.raises(ConfigError, match="tiny-cpu"):
        load_config("no-such-recipe")
    with pytest.raises(ConfigError, match="optim.lr_gg"):
        load_config("tiny-cpu", ["optim.lr_gg=1"])
    with pytest.raises(ConfigError, match="data.patch"):
        load_config("tiny-cpu", ["data.patch=63"])


def test_schedules():
    assert lr_factor("constant", 123) == 1.0
    assert [lr_factor("step", s, period=10, gamma=0.5) for s in (0, 9, 10, 25)] == [1, 1, 0.5, 0.25]
    assert [lr_factor("multistep", s, milestones=[5, 8], gamma=0.1) for s in (4, 5, 8)] == pytest.approx([1, 0.1, 0.01])
    warm = [lr_factor("cosine", s, warmup=4, total=104, min_ratio=0.1) for s in (0, 3, 54, 104)]
    assert warm == pytest.approx([0.25, 1.0, 0.55, 0.1])
    with pytest.raises(ValueError):
        lr_factor("linear", 0)


def test_ema_averages_parameters_and_copies_buffers():
    model = nn.BatchNorm2d(2)
    ema = EMA(model, EMAConfig(decay=0.9, start=1))
    with torch.no_grad():
        model.weight.fill_(2.0)
        model.running_mean.fill_(5.0)
    ema.update(step=0)  # before ema.start: a copy
    assert torch.equal(ema.module.weight, model.weight.detach())
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.update(step=1)
    assert torch.allclose(ema.module.weight, torch.full((2,), 2.1))
    assert torch.equal(ema.module.running_mean, torch.full((2,), 5.0))
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_ema_skipped_step_and_every_k():
    model = nn.Linear(3, 2)
    ema = EMA(model, EMAConfig(decay=0.9))
    before = [p.clone() for p in ema.module.parameters()]
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(step=0, skipped=torch.tensor(1.0))  # a step skipped on the device: no change
    assert all(torch.equal(a, b) for a, b in zip(before, ema.module.parameters(), strict=True))
    ema.update(step=0, skipped=torch.tensor(0.0))
    assert torch.allclose(ema.module.weight, before[0] + 0.1)
    sparse = EMA(model, EMAConfig(decay=0.9, every=2))
    start = sparse.module.weight.clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    sparse.update(step=0)  # (step + 1) % every != 0: nothing
    assert torch.equal(sparse.module.weight, start)
    sparse.update(step=1)  # decay**2 over two steps' worth
    assert torch.allclose(sparse.module.weight, start + (1 - 0.81))


def test_latest_state_only_trusts_complete_dirs(tmp_path):
    assert latest_state(tmp_path) is None
    (tmp_path / "state").mkdir()
    assert latest_state(tmp_path) is None
    (tmp_path / "state.old").mkdir()
    (tmp_path / "state.old" / COMPLETE).write_text("{}")
    assert latest_state(tmp_path) == tmp_path / "state.old"
    (tmp_path / "state" / COMPLETE).write_text("{}")
    assert latest_state(tmp_path) == tmp_path / "state"


def test_to_float_layout():
    b = torch.randint(0, 256, (2, 8, 6, 3), dtype=torch.uint8)
    x = to_float(b, torch.device("cpu"), channels_last=True)
    assert x.shape == (2, 3, 8, 6) and x.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(x[1, 2, 3, 4], b[1, 3, 4, 2].float() / 255)
    assert to_float(b, torch.device("cpu"), channels_last=False).is_contiguous()

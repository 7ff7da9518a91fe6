"""model.init pieces in-process: BGR folding, arch from the file, strict and loose loading, resume,
discriminator init. The 2-process runs from released layouts are in tests/integration/test_train_finetune.py."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import save_file

from awm import config as cfgmod
from awm.errors import ConfigError
from awm.models.archs import build_model
from awm.models.checkpoint import ChannelSwap, basicsr_state_dict, fold_bgr, save_checkpoint
from awm.models.discriminators import DiscriminatorConfig, build_discriminator
from awm.models.loaded import CheckpointError
from awm.train import finetune
from awm.train.config import load_config


def _random(arch, scale, seed):
    torch.manual_seed(seed)
    net = build_model(arch, scale)
    for p in net.parameters():
        p.data.normal_(0, 0.05)
    return net.eval()


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture
def records():
    h = _Records()
    logging.getLogger("awm").addHandler(h)
    yield h.lines
    logging.getLogger("awm").removeHandler(h)


@pytest.mark.parametrize(("arch", "scale"), [("rrdb-tiny", 2), ("rrdb-tiny", 4), ("rrdb-tiny", 1),
                                             ("compact-tiny", 2), ("compact-tiny", 3)])
def test_fold_bgr_equals_channel_swap(arch, scale):
    net = _random(arch, scale, seed=scale)
    folded = fold_bgr(net, 4, 4)
    assert type(folded) is type(net) and folded.state_dict().keys() == net.state_dict().keys()
    x = torch.rand(2, 3, 12, 16)
    with torch.no_grad():
        want, plain = ChannelSwap(net)(x), net(x)
        assert torch.allclose(folded(x), want, atol=1e-5)
        assert not torch.allclose(plain, want, atol=1e-3)  # the swap changes this network's output


@pytest.mark.parametrize("arch", ["swinir-tiny", "span-tiny"])
def test_fold_bgr_refuses_colour_handling_outside_the_convs(arch):
    # SwinIR: its RGB mean is a constant, not a weight; SPAN: its eval conv is re-derived from other weights
    with pytest.raises(CheckpointError, match="cannot be folded"):
        fold_bgr(_random(arch, 2, seed=0), 4, 16)


def _cfg(tmp_path, init, **kw):
    over = {"runs": tmp_path / "runs", "model.arch": "null", "model.hparams": "{}", "model.init": init, **kw}
    return load_config("tiny-cpu", [f"{k}={v}" for k, v in over.items()])


def test_arch_and_colour_order_come_from_the_file(tmp_path):
    net = _random("rrdb-tiny", 2, seed=1)
    torch.save({"model_state_dict": basicsr_state_dict(net)}, tmp_path / "apisr.pth")
    cfg = _cfg(tmp_path, tmp_path / "apisr.pth")
    init = finetune.prepare(cfg, resuming=False)
    assert (cfg.model.arch, cfg.model.init_color_order, init.source) == ("rrdb-tiny", "bgr", "apisr")
    assert cfg.model.hparams == {"num_feat": 16, "num_block": 1, "num_grow_ch": 32}
    gen = build_model(cfg.model.arch, 2, **cfg.model.hparams)
    finetune.load_generator(gen, init, cfg)
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(gen.eval()(x), ChannelSwap(net)(x), atol=1e-5)
    rgb = _cfg(tmp_path, tmp_path / "apisr.pth", **{"model.init_color_order": "rgb"})
    finetune.load_generator(gen, finetune.prepare(rgb, resuming=False), rgb)
    with torch.no_grad():
        assert torch.allclose(gen(x), net(x), atol=1e-6)


def test_set_arch_must_match_strictly_or_loads_what_fits(tmp_path, records):
    net = _random("rrdb-tiny", 2, seed=2)
    torch.save({"params_ema": basicsr_state_dict(net)}, tmp_path / "net_g.pth")
    wider = {"model.arch": "rrdb-tiny", "model.hparams": "{num_feat: 16, num_block: 2}"}
    cfg = _cfg(tmp_path, tmp_path / "net_g.pth", **wider)
    init = finetune.prepare(cfg, resuming=False)
    gen = build_model("rrdb-tiny", 2, num_block=2)
    with pytest.raises(finetune.InitMismatchError, match=r"missing from the file body\.1\.rdb1\.conv1\.weight"):
        finetune.load_generator(gen, init, cfg)
    narrow = _cfg(tmp_path, tmp_path / "net_g.pth", **{"model.arch": "rrdb-tiny", "model.hparams": "{num_feat: 8}"})
    with pytest.raises(finetune.InitMismatchError, match=r"shape mismatch conv_first\.weight: file \[16, 12, 3, 3\] vs model "
                                          r"\[8, 12, 3, 3\]"):
        finetune.load_generator(build_model("rrdb-tiny", 2, num_feat=8), finetune.prepare(narrow, False), narrow)
    loose = _cfg(tmp_path, tmp_path / "net_g.pth", **wider, **{"model.init_strict": "false"})
    finetune.load_generator(gen, finetune.prepare(loose, False), loose)
    assert torch.equal(gen.state_dict()["model.0.weight"], net.state_dict()["model.0.weight"])
    assert any("not loaded" in line and "missing from the file body.1.rdb1.conv1.weight" in line for line in records)
    other = _cfg(tmp_path, tmp_path / "net_g.pth", **{"model.arch": "compact-tiny"})
    with pytest.raises(ConfigError, match="RRDBNet; the model is SRVGGNetCompact"):
        finetune.load_generator(build_model("compact-tiny", 2), finetune.prepare(other, False), other)


def test_a_file_of_another_scale_says_the_scales_differ(tmp_path):
    """An x4 file into an x2 run: no use suggesting model.init_strict=false, the upsampler cannot fit."""
    torch.save({"params_ema": basicsr_state_dict(_random("rrdb-tiny", 4, seed=6))}, tmp_path / "x4.pth")
    cfg = _cfg(tmp_path, tmp_path / "x4.pth")
    init = finetune.prepare(cfg, resuming=False)
    with pytest.raises(finetune.InitMismatchError) as e:
        finetune.load_generator(build_model(cfg.model.arch, 2, **cfg.model.hparams), init, cfg)
    said = str(e.value)
    assert "the scales differ: the file is a x4 model and this run trains x2 (data.scale=2)" in said
    assert "init_strict" not in said and "\n" not in said


def test_a_width_mismatch_lists_a_few_tensors_one_per_line(tmp_path):
    wide = basicsr_state_dict(_random("rrdb-tiny", 2, seed=7))
    torch.save({"params_ema": wide}, tmp_path / "net_g.pth")
    narrow = _cfg(tmp_path, tmp_path / "net_g.pth", **{"model.arch": "rrdb-tiny", "model.hparams": "{num_feat: 8}"})
    gen = build_model("rrdb-tiny", 2, num_feat=8)
    with pytest.raises(finetune.InitMismatchError) as e:
        finetune.load_generator(gen, finetune.prepare(narrow, False), narrow)
    lines = str(e.value).splitlines()
    differing = sum(1 for k, v in basicsr_state_dict(gen).items() if v.shape != wide[k].shape)
    assert lines[0].endswith("(set model.init_strict=false to load the tensors that fit):")
    assert len(lines) == 1 + finetune.SHOWN + 1 and all(x.startswith("  shape mismatch ") for x in lines[1:-1])
    assert lines[-1] == f"  ... and {differing - finetune.SHOWN} more"


def test_a_corrupt_safetensors_names_model_init_and_the_file(tmp_path):
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ConfigError) as e:
        finetune.prepare(_cfg(tmp_path, bad), resuming=False)
    assert str(e.value).startswith(f"config key 'model.init': got '{bad}'") and "not a readable .safetensors" in str(e.value)


def test_resume_ignores_init_and_our_run_dirs_load(tmp_path, records):
    net = _random("compact-tiny", 2, seed=3)
    save_checkpoint(tmp_path / "old" / "checkpoints" / "best", net, "compact-tiny", {}, 2, step=5)
    cfg = _cfg(tmp_path, tmp_path / "old")
    assert finetune.prepare(cfg, resuming=True) is None and cfg.model.arch == "compact-tiny"
    assert any("ignored: resuming" in line for line in records)
    init = finetune.prepare(_cfg(tmp_path, tmp_path / "old"), resuming=False)
    assert (init.source, init.color_order) == ("awm", "rgb")
    # a resumed run takes what its first start resolved (config.yaml), even once the file is gone
    torch.save({"model_state_dict": basicsr_state_dict(_random("rrdb-tiny", 2, seed=5))}, tmp_path / "a.pth")
    first = _cfg(tmp_path, tmp_path / "a.pth")
    finetune.prepare(first, resuming=False)
    cfgmod.save(first, first.run_dir / "config.yaml")
    (tmp_path / "a.pth").unlink()
    again = _cfg(tmp_path, tmp_path / "a.pth")
    assert finetune.prepare(again, resuming=True) is None
    assert (again.model.arch, again.model.init_color_order) == ("rrdb-tiny", "bgr")
    assert again.model.hparams == first.model.hparams
    with pytest.raises(ConfigError, match="model.init"):
        finetune.prepare(_cfg(tmp_path, tmp_path / "nothing.pth"), resuming=False)


def test_discriminator_init_from_a_file_and_a_run_state(tmp_path):
    dcfg = DiscriminatorConfig(num_feat=8)
    torch.manual_seed(4)
    src = build_discriminator(dcfg)
    torch.save({"params": src.state_dict()}, tmp_path / "net_d.pth")
    (tmp_path / "run" / "state").mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()},
              str(tmp_path / "run" / "state" / "model.safetensors"))
    save_file({"body.0.weight": torch.zeros(1)}, str(tmp_path / "run" / "state" / "model_1.safetensors"))
    for where in ("net_d.pth", "run"):
        cfg = load_config("tiny-cpu", [f"model.init_discriminator={tmp_path / where}",
                                       "model.discriminator.num_feat=8"])
        d = build_discriminator(dcfg)
        finetune.load_discriminator(d, cfg, resuming=False)
        assert all(torch.equal(a, b) for a, b in zip(d.state_dict().values(), src.state_dict().values(),
                                                     strict=True))
    wide = load_config("tiny-cpu", [f"model.init_discriminator={tmp_path / 'net_d.pth'}"])
    with pytest.raises(finetune.InitMismatchError, match="shape mismatch conv0.weight"):
        finetune.load_discriminator(build_discriminator(DiscriminatorConfig(num_feat=16)), wide, resuming=False)

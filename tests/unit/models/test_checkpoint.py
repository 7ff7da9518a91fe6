import json
import logging
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file
from spandrel import ModelLoader
from spandrel.architectures.GRL import GRL
from torch import nn
from torch.nn import functional as F

from awm import cli
from awm.models.archs import ARCHS, build_model, export_state_dict
from awm.models.checkpoint import basicsr_state_dict, load_model, save_checkpoint
from awm.models.loaded import CheckpointError

TINY = [name for name in ARCHS if name.endswith("-tiny")]


def _out(module, x):
    with torch.no_grad():
        return module.eval()(x)


# --- An independent RRDBNet, written from the published BasicSR structure (not from spandrel). ---
class _RDB(nn.Module):
    def __init__(self, nf, gc):
        super().__init__()
        for i in range(1, 6):
            setattr(self, f"conv{i}", nn.Conv2d(nf + (i - 1) * gc, nf if i == 5 else gc, 3, 1, 1))

    def forward(self, x):
        feats = [x]
        for i in range(1, 5):
            feats.append(F.leaky_relu(getattr(self, f"conv{i}")(torch.cat(feats, 1)), 0.2))
        return self.conv5(torch.cat(feats, 1)) * 0.2 + x


class _RRDB(nn.Module):
    def __init__(self, nf, gc):
        super().__init__()
        self.rdb1, self.rdb2, self.rdb3 = _RDB(nf, gc), _RDB(nf, gc), _RDB(nf, gc)

    def forward(self, x):
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class MiniRRDBNet(nn.Module):
    def __init__(self, scale, num_feat=16, num_block=2, num_grow_ch=32):
        super().__init__()
        self.unshuffle = {1: 4, 2: 2, 4: 1}[scale]
        self.conv_first = nn.Conv2d(3 * self.unshuffle**2, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*[_RRDB(num_feat, num_grow_ch) for _ in range(num_block)])
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, 3, 3, 1, 1)

    def forward(self, x):
        if self.unshuffle > 1:
            x = F.pixel_unshuffle(x, self.unshuffle)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for up in (self.conv_up1, self.conv_up2):
            feat = F.leaky_relu(up(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))


def _mini(scale, seed):
    torch.manual_seed(seed)
    net = MiniRRDBNet(scale)
    for p in net.parameters():  # non-trivial weights so every layer matters
        p.data.normal_(0, 0.05)
    return net.eval()


@pytest.mark.parametrize("arch", TINY)
def test_round_trip_ours_and_converted_through_spandrel(arch, tmp_path):
    torch.manual_seed(0)
    model = build_model(arch, 2)
    x = torch.rand(1, 3, 16, 16)
    ref = _out(model, x)
    save_checkpoint(tmp_path / "ck", model, arch, {}, 2, step=7, config={"lr": 1e-4})
    loaded = load_model(tmp_path / "ck")
    assert (loaded.arch, loaded.scale, loaded.source, loaded.meta["step"]) == (arch, 2, "awm", 7)
    assert loaded.meta["color_order"] == "RGB" and len(loaded.meta["config_digest"]) == 16
    assert not loaded.module.training and torch.equal(_out(loaded.module, x), ref)
    for suffix in (".pth", ".safetensors"):
        out = tmp_path / f"model{suffix}"
        assert cli.main(["convert", str(tmp_path / "ck"), "--out", str(out)]) == 0
        desc = ModelLoader().load_from_file(out)
        assert desc.scale == 2 and torch.equal(_out(desc.model, x), ref)


def test_run_dir_prefers_best_then_last(tmp_path):
    run = tmp_path / "runs" / "r1"
    m1, m2 = build_model("compact-tiny", 2), build_model("compact-tiny", 2)
    save_checkpoint(run / "checkpoints" / "last", m1, "compact-tiny", {}, 2, step=20)
    assert load_model(run).meta["step"] == 20
    save_checkpoint(run / "checkpoints" / "best", m2, "compact-tiny", {}, 2, step=10)
    assert load_model(run).meta["step"] == 10
    save_checkpoint(run / "checkpoints" / "best", m1, "compact-tiny", {}, 2, step=30)  # overwrite in place
    assert load_model(run).meta["step"] == 30
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best", "last"]
    with pytest.raises(CheckpointError, match="checkpoints/best"):
        load_model(tmp_path)


def test_wrapped_models_save_bare_keys(tmp_path):
    model = build_model("compact-tiny", 2)
    save_checkpoint(tmp_path / "ck", nn.DataParallel(model), "compact-tiny", {}, 2, step=1)
    x = torch.rand(1, 3, 8, 8)
    assert torch.equal(_out(load_model(tmp_path / "ck").module, x), _out(model, x))


@pytest.mark.parametrize("scale", [2, 4])
def test_apisr_rrdb_layout_matches_independent_rrdbnet(scale, tmp_path):
    net = _mini(scale, seed=scale)
    assert net.conv_first.weight.shape[1] == (12 if scale == 2 else 3)
    path = tmp_path / f"{scale}x_APISR_RRDB_GAN_generator.pth"
    torch.save({"model_state_dict": net.state_dict(), "iteration": 1000, "lowest_generator_weight": 0.1}, path)
    loaded = load_model(path)
    x = torch.rand(1, 3, 16, 12)
    assert (loaded.source, loaded.arch, loaded.scale) == ("apisr", "rrdb", scale)
    assert loaded.hparams == {"num_feat": 16, "num_block": 2, "num_grow_ch": 32}
    assert torch.allclose(_out(loaded.module, x), _out(net, x), atol=1e-6)
    # converting back gives BasicSR names that load strictly into the independent network
    back = MiniRRDBNet(scale)
    back.load_state_dict(basicsr_state_dict(loaded.module), strict=True)
    assert torch.allclose(_out(back, x), _out(net, x), atol=1e-6)


def test_realesrgan_prefers_params_ema_then_params(tmp_path):
    ema, raw = _mini(4, seed=1), _mini(4, seed=2)
    x = torch.rand(1, 3, 12, 12)
    both = tmp_path / "RealESRGAN_x4plus_anime_6B.pth"
    torch.save({"params_ema": ema.state_dict(), "params": raw.state_dict()}, both)
    loaded = load_model(both)
    assert loaded.source == "realesrgan" and torch.allclose(_out(loaded.module, x), _out(ema, x), atol=1e-6)
    only = tmp_path / "net_g.pth"
    torch.save({"params": raw.state_dict()}, only)
    assert torch.allclose(_out(load_model(only).module, x), _out(raw, x), atol=1e-6)


def test_prefixes_plain_and_safetensors(tmp_path):
    net = _mini(2, seed=3)
    x = torch.rand(1, 3, 8, 8)
    sd = net.state_dict()
    layouts = {
        "ddp.pth": {f"module.{k}": v for k, v in sd.items()},
        "compiled.pth": {"model_state_dict": {f"_orig_mod.{k}": v for k, v in sd.items()}},
        "plain.pt": sd,
    }
    for name, data in layouts.items():
        torch.save(data, tmp_path / name)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "plain.safetensors"))
    for name in [*layouts, "plain.safetensors"]:
        loaded = load_model(tmp_path / name)
        assert loaded.arch == "rrdb" and loaded.scale == 2, name
        assert torch.allclose(_out(loaded.module, x), _out(net, x), atol=1e-6), name


def _apisr_grl(stripe_shift):
    torch.manual_seed(5)
    hp = {**ARCHS["grl-tiny"].defaults, "stripe_shift": stripe_shift, "upsampler": "nearest+conv"}
    return build_model("grl-tiny", 4, **hp).eval()


def test_apisr_grl_is_rebuilt_without_stripe_shift(tmp_path):
    source = _apisr_grl(stripe_shift=False)
    path = tmp_path / "4x_APISR_GRL_GAN_generator.pth"
    # APISR's GRL code keeps its window/stripe tables as persistent buffers, so the file has them
    torch.save({"model_state_dict": export_state_dict(source)}, path)
    x = torch.rand(1, 3, 16, 16)
    loaded = load_model(path)
    assert isinstance(loaded.module, GRL) and loaded.hparams["stripe_shift"] is False
    assert (loaded.source, loaded.arch, loaded.scale) == ("apisr", "grl", 4)
    assert loaded.hparams["embed_dim"] == 16 and loaded.hparams["upsampler"] == "nearest+conv"
    assert torch.allclose(_out(loaded.module, x), _out(source, x), atol=1e-6)
    spandrel_default = ModelLoader().load_from_file(path).model
    assert not torch.allclose(_out(spandrel_default, x), _out(source, x), atol=1e-6)


def test_apisr_dat_layout(tmp_path):
    torch.manual_seed(6)
    source = build_model("dat-tiny", 4).eval()
    path = tmp_path / "4x_APISR_DAT_GAN_generator.pth"
    torch.save({"model_state_dict": source.state_dict()}, path)
    loaded = load_model(path)
    x = torch.rand(1, 3, 16, 16)
    assert (loaded.source, loaded.arch, loaded.scale) == ("apisr", "dat-tiny", 4)
    assert torch.allclose(_out(loaded.module, x), _out(source, x), atol=1e-6)


def test_colour_order_either_way(tmp_path):
    net = _mini(2, seed=4)
    path = tmp_path / "2x_APISR_RRDB_GAN_generator.pth"
    torch.save({"model_state_dict": net.state_dict()}, path)
    x = torch.rand(1, 3, 8, 8)
    x[:, 0] = 1.0  # strongly red, so a channel swap is visible
    rgb, bgr = load_model(path), load_model(path, color_order="bgr")
    assert rgb.meta["color_order"] == "RGB" and bgr.meta["color_order"] == "BGR"
    assert torch.allclose(_out(rgb.module, x), _out(net, x), atol=1e-6)
    assert torch.allclose(_out(bgr.module, x), _out(net, x.flip(1)).flip(1), atol=1e-6)
    assert not torch.allclose(_out(bgr.module, x), _out(rgb.module, x), atol=1e-3)
    save_checkpoint(tmp_path / "ck", rgb.module, rgb.arch, rgb.hparams, 2, step=0)  # fine-tuning starts here
    with pytest.raises(CheckpointError, match="RGB"):
        load_model(tmp_path / "ck", color_order="bgr")
    assert torch.equal(_out(load_model(tmp_path / "ck").module, x), _out(rgb.module, x))


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    zip_path = tmp_path / "evil.pth"
    torch.save({"params_ema": _mini(4, 0).state_dict(), "hook": _Evil(marker)}, zip_path)
    legacy = tmp_path / "evil_legacy.pt"
    legacy.write_bytes(pickle.dumps({"state_dict": _Evil(marker)}, protocol=2))
    for path in (zip_path, legacy):
        with pytest.raises(CheckpointError, match="refused"):
            load_model(path)
    records = _Records()
    logging.getLogger("awm").addHandler(records)
    try:
        assert cli.main(["convert", str(zip_path), "--out", str(tmp_path / "x.pth")]) == 1
    finally:
        logging.getLogger("awm").removeHandler(records)
    assert any("refused" in m and "posix.system" in m for m in records.messages)
    assert not marker.exists() and not (tmp_path / "x.pth").exists()


def test_unrecognised_and_missing_files_are_clear_errors(tmp_path):
    torch.save({"encoder.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="no architecture"):
        load_model(tmp_path / "other.pth")
    torch.save({"params_ema": {"note": "no tensors"}}, tmp_path / "empty.pth")
    with pytest.raises(CheckpointError, match="no tensors"):
        load_model(tmp_path / "empty.pth")
    with pytest.raises(CheckpointError, match="no such file"):
        load_model(tmp_path / "absent.pth")
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "meta.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(CheckpointError, match="format"):
        load_model(tmp_path / "ck")


def test_checkpoints_and_exports_get_the_umask_mode(tmp_path):
    """safetensors and mkdtemp create 0600/0700: teammates on shared storage could not read them."""
    import stat

    from awm.models.checkpoint import convert

    umask = os.umask(0)
    os.umask(umask)
    ckpt = save_checkpoint(tmp_path / "ck", build_model("compact-tiny", 2), "compact-tiny", {}, 2, step=1)
    convert(ckpt, tmp_path / "x.safetensors")
    convert(ckpt, tmp_path / "x.pth")
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [ckpt, *ckpt.iterdir(), tmp_path / "x.safetensors",
                                                               tmp_path / "x.pth"]}
    assert modes == {"ck": 0o777 & ~umask, "model.safetensors": 0o666 & ~umask, "meta.json": 0o666 & ~umask,
                     "x.safetensors": 0o666 & ~umask, "x.pth": 0o666 & ~umask}

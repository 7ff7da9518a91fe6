import math
from pathlib import Path

import pytest
import torch
import torchvision

from awm.config import from_dict, load
from awm.errors import ConfigError
from awm.models.archs import build_model
from awm.models.discriminators import MultiScalePatchGAN, UNetDiscriminatorSN
from awm.models.losses import (
    BACKBONE_WEIGHTS,
    GANConfig,
    LossConfig,
    PerceptualConfig,
    build_discriminator,
    build_discriminator_loss,
    build_generator_loss,
    build_pixel_loss,
    gan_discriminator_terms,
    gan_generator_term,
)


@pytest.fixture(scope="module")
def backbone_files(tmp_path_factory):
    """Random-init backbones written in the released files' layouts, read back by the real loaders."""
    d = tmp_path_factory.mktemp("backbones")
    torch.manual_seed(0)
    vgg = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["E"])
    torch.save({f"features.{k}": v for k, v in vgg.state_dict().items()}, d / "vgg19-dcbb9e9d.pth")
    r = torchvision.models.resnet50(weights=None)
    body = torch.nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool, r.layer1, r.layer2, r.layer3, r.layer4)
    state = {f"0.{k}": v for k, v in body.state_dict().items() if not k.endswith("num_batches_tracked")}
    state.update({"1.2.weight": torch.ones(4096), "1.4.weight": torch.zeros(512, 4096)})  # RF5's tag head
    torch.save(state, d / "resnet50-13306192.pth")
    return {"vgg_path": str(d / "vgg19-dcbb9e9d.pth"), "anime_path": str(d / "resnet50-13306192.pth")}


def _cfg(backbones, pixel=1.0, vgg=0.0, anime=0.0, gan=0.0):
    return from_dict(LossConfig, {"pixel": {"weight": pixel}, "gan": {"weight": gan},
                                  "perceptual": {"vgg_weight": vgg, "anime_weight": anime, **backbones}})


def _generator_grads(loss_fn, seed=0):
    torch.manual_seed(seed)
    gen = build_model("compact-tiny", 2)
    lr, hr = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 32, 32)
    terms = loss_fn(gen(lr), hr)
    sum(terms.values()).backward()
    return torch.cat([p.grad.flatten() for p in gen.parameters()]), {k: float(v) for k, v in terms.items()}


def test_each_perceptual_backbone_changes_generator_gradients(backbone_files):
    base, _ = _generator_grads(build_generator_loss(_cfg(backbone_files)))
    for name, kw in (("perceptual_vgg", {"vgg": 0.5}), ("perceptual_anime", {"anime": 0.5})):
        grads, terms = _generator_grads(build_generator_loss(_cfg(backbone_files, **kw)))
        assert set(terms) == {"pixel", name} and terms[name] > 0
        assert not torch.allclose(grads, base), name
        alone, _ = _generator_grads(build_generator_loss(_cfg(backbone_files, pixel=0.0, **kw)))
        assert alone.abs().sum() > 0, f"{name} alone must train the generator"


def test_backbones_are_frozen_and_per_layer_weights_apply(backbone_files):
    loss = build_generator_loss(_cfg(backbone_files, vgg=1.0, anime=1.0))
    assert not any(p.requires_grad for p in loss.parameters())
    sr, hr = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    values = []
    for w in (1.0, 2.0):
        p = PerceptualConfig(vgg_layers={"conv2_2": w}, anime_weight=0.0, vgg_path=backbone_files["vgg_path"])
        values.append(build_generator_loss(LossConfig(perceptual=p, gan=GANConfig(weight=0.0)))(sr, hr))
    t1, t2 = values
    assert math.isclose(float(t2["perceptual_vgg"]), 2 * float(t1["perceptual_vgg"]), rel_tol=1e-5)


def test_missing_weights_fail_at_build_with_the_place_to_put_them(tmp_path):
    cfg = from_dict(LossConfig, {"perceptual": {"vgg_path": str(tmp_path / "nope.pth"), "anime_weight": 0}})
    with pytest.raises(FileNotFoundError, match="nope.pth") as e:
        build_generator_loss(cfg)
    assert str(BACKBONE_WEIGHTS["vgg19"].default_path()) in str(e.value) and "awm weights" in str(e.value)
    # the L1 warm-up stage needs no backbone at all
    l1 = build_generator_loss(from_dict(LossConfig, {"perceptual": {"vgg_weight": 0, "anime_weight": 0},
                                                     "gan": {"weight": 0}}))
    assert l1.vgg is None and l1.anime is None


def test_backbone_registry_points_at_the_torch_hub_cache():
    for b in BACKBONE_WEIGHTS.values():
        assert b.default_path().name == b.filename and b.url.endswith(b.filename)
        assert b.default_path().parent == Path(torch.hub.get_dir()) / "checkpoints"


def test_typos_and_impossible_configs_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="conv5_4"):
        from_dict(LossConfig, {"perceptual": {"vgg_layers": {"conv5_5": 1.0}}})
    with pytest.raises(ConfigError, match="7_2_conv3"):
        from_dict(LossConfig, {"perceptual": {"anime_layers": {"7_3_conv3": 1.0}}})
    with pytest.raises(ConfigError, match="gan.type"):
        from_dict(LossConfig, {"gan": {"type": "wgan"}})
    with pytest.raises(ConfigError, match="perceptual"):
        from_dict(LossConfig, {"perceptual": {"vgg_weights": 1.0}})
    with pytest.raises(ConfigError, match="at least one"):
        from_dict(LossConfig, {"pixel": {"weight": 0}, "perceptual": {"vgg_weight": 0, "anime_weight": 0},
                               "gan": {"weight": 0}})
    cfg = load(LossConfig, overrides=["pixel.type=charbonnier", "perceptual.anime_weight=0"])
    assert cfg.pixel.type == "charbonnier" and cfg.perceptual.anime_weight == 0


def test_pixel_losses():
    sr, hr = torch.zeros(1, 3, 4, 4), torch.full((1, 3, 4, 4), 0.5)
    off = {"perceptual": {"vgg_weight": 0, "anime_weight": 0}, "gan": {"weight": 0}}
    cfg = from_dict(LossConfig, {**off, "pixel": {"weight": 0.25}})
    assert math.isclose(float(build_generator_loss(cfg)(sr, hr)["pixel"]), 0.25 * 0.5, rel_tol=1e-6)
    assert math.isclose(float(build_pixel_loss(cfg)(sr, hr)), 0.5, rel_tol=1e-6)  # warm-up: unweighted
    ch = build_pixel_loss(from_dict(LossConfig, {**off, "pixel": {"type": "charbonnier", "eps": 1e-3}}))
    assert math.isclose(float(ch(sr, hr)), math.sqrt(0.25 + 1e-6), rel_tol=1e-6)


def test_gan_losses_vanilla_lsgan_hinge():
    zeros, big = torch.zeros(2, 1, 4, 4), torch.full((2, 1, 4, 4), 3.0)

    def d(kind, real, fake):
        return [float(t) for t in gan_discriminator_terms(kind, real, fake)]

    assert math.isclose(float(gan_generator_term("vanilla", zeros)), math.log(2), rel_tol=1e-6)
    assert d("vanilla", zeros, zeros) == pytest.approx([math.log(2)] * 2)
    assert float(gan_generator_term("lsgan", zeros)) == 1.0
    assert d("lsgan", big / 3, zeros) == [0.0, 0.0] and d("lsgan", zeros, big / 3) == [1.0, 1.0]
    assert d("hinge", big, -big) == [0.0, 0.0] and d("hinge", zeros, zeros) == [1.0, 1.0]
    assert float(gan_generator_term("hinge", big)) == -3.0
    # multi-scale logits are averaged over scales
    assert float(gan_generator_term("hinge", [big, zeros])) == -1.5


def test_generator_loss_needs_logits_when_gan_is_on(backbone_files):
    loss = build_generator_loss(_cfg(backbone_files, gan=0.1))
    sr, hr = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    with pytest.raises(ValueError, match="logits"):
        loss(sr, hr)
    terms = loss(sr, hr, fake_logits=torch.zeros(1, 1, 16, 16))
    assert set(terms) == {"pixel", "gan"} and math.isclose(float(terms["gan"]), 0.1 * math.log(2), rel_tol=1e-5)


def test_discriminator_loss_from_one_concatenated_batch(backbone_files):
    d_loss = build_discriminator_loss(_cfg(backbone_files, gan=0.1))
    real, fake = torch.full((2, 1, 4, 4), 3.0), torch.full((2, 1, 4, 4), -1.0)
    split = d_loss(real, fake)
    both = d_loss(torch.cat([real, fake]))
    assert set(both) == {"d_real", "d_fake"}
    assert all(torch.equal(split[k], both[k]) for k in both)
    multi = d_loss([torch.cat([real, fake]), torch.cat([real, fake])[:, :, :2, :2]])
    assert all(torch.allclose(multi[k], split[k]) for k in multi)
    with pytest.raises(ValueError, match="odd"):
        d_loss(torch.zeros(3, 1, 4, 4))


@pytest.mark.parametrize("name", ["unet-sn", "patchgan-ms"])
def test_discriminators_train_under_bf16_autocast(name):
    torch.manual_seed(0)
    d = build_discriminator(name, num_feat=8, num_scales=2, num_layers=2)
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = d(x)
        loss = sum(gan_discriminator_terms("hinge", out, d(x.detach().flip(-1))))
    loss.backward()
    maps = out if isinstance(out, list) else [out]
    assert all(m.shape[:2] == (2, 1) for m in maps) and x.grad.abs().sum() > 0
    assert any(n.endswith("weight_orig") for n, _ in d.named_parameters())  # spectral norm


def test_discriminator_shapes_and_realesrgan_names():
    unet = build_discriminator("unet-sn", num_feat=8)
    assert isinstance(unet, UNetDiscriminatorSN) and unet(torch.rand(1, 3, 32, 24)).shape == (1, 1, 32, 24)
    names = set(unet.state_dict())
    assert {"conv0.weight", "conv1.weight_orig", "conv8.weight_orig", "conv9.weight", "conv9.bias"} <= names
    ms = build_discriminator("patchgan-ms", num_feat=8, num_scales=3, num_layers=3)
    maps = ms(torch.rand(1, 3, 128, 128))  # 3 scales x 3 layers: the coarsest scale needs >= 32 px
    assert isinstance(ms, MultiScalePatchGAN) and [m.shape[-1] for m in maps] == [14, 6, 2]
    with pytest.raises(ConfigError, match="unet-sn"):
        build_discriminator("stylegan")


def test_frozen_backbones_are_cast_and_laid_out_once_not_every_step(backbone_files):
    """Autocast re-casts weights that do not require grad at every call: settled once to bf16 and
    channels_last, a step's perceptual terms cast no backbone weight (fewer copies), same values."""
    loss = build_generator_loss(_cfg(backbone_files, vgg=1.0, anime=1.0))
    sr, hr = (torch.rand(1, 3, 32, 32).contiguous(memory_format=torch.channels_last) for _ in range(2))

    def copies() -> tuple[int, dict]:
        with torch.autocast("cpu", dtype=torch.bfloat16), \
                torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            terms = loss(sr, hr)
        return sum(e.name == "aten::_to_copy" for e in prof.events()), terms

    per_step, before = copies()
    loss.settle_backbones(torch.bfloat16, torch.channels_last)
    settled, after = copies()
    weights = [p for p in loss.vgg.extractor.features.parameters()] + list(loss.anime.extractor.body.parameters())
    assert all(p.dtype == torch.bfloat16 for p in weights)
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in weights if p.dim() == 4)
    assert loss.vgg.extractor.mean.dtype == torch.float32
    assert settled < per_step - 20, (settled, per_step)  # ~2 casts per conv were made every step
    for k in before:
        assert math.isclose(float(after[k]), float(before[k]), rel_tol=1e-2), k

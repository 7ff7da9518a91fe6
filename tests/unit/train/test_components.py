"""One step's pieces on the CPU: fp16 gradient unscaling with a real GradScaler, precision refused by
architecture, saved state keys without wrapper prefixes, EMA without per-step copies."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from awm.config import ConfigError
from awm.models.archs import build_model, model_info
from awm.train.components import Components, apply_update, bare_key, build_components, make_optimizer
from awm.train.config import ModelConfig, TrainConfig
from awm.train.utils import EMA, EMAConfig


@pytest.fixture
def accelerator():
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    acc = Accelerator(cpu=True)
    yield acc
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def test_fp16_gan_step_unscales_each_optimizer_once_then_clips_both(accelerator):
    """fp16 runs carry a GradScaler. The GAN stage clips two parameter groups; Accelerate's
    clip_grad_norm_ unscales every optimizer on each call, so a second group made GradScaler fail
    ("unscale_() has already been called on this optimizer since the last update()"). Accelerate
    gives a CPU no GradScaler, so the test hands it torch's CPU one (the same class, device 'cpu')
    and the fp16 flags it sets on a GPU."""
    acc = accelerator
    acc.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    acc.native_amp, acc.state._mixed_precision = True, "fp16"  # what Accelerate sets for fp16 on a GPU
    g, d = build_model("compact-tiny", 2), nn.Conv2d(3, 1, 3)
    g_opt = make_optimizer(list(g.parameters()), 1e-3, (0.9, 0.99), 0.0, acc.device, deepspeed=False)
    d_opt = make_optimizer(list(d.parameters()), 1e-3, (0.9, 0.99), 0.0, acc.device, deepspeed=False)
    pg, g_opt, pd, d_opt = acc.prepare(g, g_opt, d, d_opt)
    c = Components(acc, model_info("compact-tiny", 2), False, pg, g, list(g.parameters()), g_opt, nn.L1Loss(),
                   discriminator=pd, discriminator_plain=d, adversary=d, discriminator_params=list(d.parameters()),
                   discriminator_optimizer=d_opt)
    x = torch.rand(2, 3, 8, 8)
    loss = pg(x).abs().mean() + pd(x).abs().mean()
    acc.backward(loss)  # scaled by 1024
    scaled = [p.grad.clone() for p in c.generator_params + c.discriminator_params]
    before = [p.detach().clone() for p in c.generator_params + c.discriminator_params]
    found_inf, norms = apply_update(c, gan=True, grad_clip=1e6, step_loss=loss.detach(), world_size=1)
    expected = [torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(s / 1024.0) for s in group]))
                for group in (scaled[:len(c.generator_params)], scaled[len(c.generator_params):])]
    assert float(found_inf) == 0.0
    assert [float(n) for n in norms] == pytest.approx([float(e) for e in expected], rel=1e-5)  # unscaled once
    after = list(c.generator_params + c.discriminator_params)
    assert all(not torch.equal(a, b) for a, b in zip(before, after, strict=True))  # both optimizers stepped


def test_fp16_is_refused_at_start_for_architectures_spandrel_marks_unsafe_in_half():
    for arch in ("swinir-tiny", "hat-tiny", "dat-tiny", "grl-tiny"):
        assert not model_info(arch, 2).supports_fp16
        cfg = TrainConfig(model=ModelConfig(arch=arch))
        with pytest.raises(ConfigError, match=f"precision.*fp16.*fp32 or bf16 for {arch}.*supports_half=False"):
            build_components(cfg, "fp16")


def test_saved_state_keys_are_the_bare_modules():
    assert bare_key("_orig_mod.body.0.weight") == "body.0.weight"
    assert bare_key("module._orig_mod.body.0.weight") == "body.0.weight"
    assert bare_key("_orig_mod.module.conv.bias") == "conv.bias" and bare_key("conv.bias") == "conv.bias"


def test_ema_update_reuses_its_buffers_and_follows_bf16_sources():
    """No fresh copy of every parameter per step (one scratch buffer, allocated once); a bf16
    source (DeepSpeed's bf16 weights) averages into the float32 copy."""
    model = nn.Linear(4, 3)
    ema = EMA(model, EMAConfig(decay=0.5))
    start = ema.module.weight.clone()
    model.to(torch.bfloat16)
    ema._source = (list(model.parameters()), list(model.buffers()))
    ema.update(step=0, skipped=torch.tensor(0.0))
    scratch = [t.data_ptr() for t in ema._scratch]
    ema.update(step=1, skipped=torch.tensor(0.0))
    assert [t.data_ptr() for t in ema._scratch] == scratch and ema.module.weight.dtype == torch.float32
    target = model.weight.float()
    assert torch.allclose(ema.module.weight, target + (start - target) * 0.25, atol=1e-6)


def test_deterministic_runs_avoid_the_ops_cuda_has_no_deterministic_backward_for():
    """deterministic=true crashed on CUDA: the U-Net discriminator's bilinear upsampling backward and
    HAT/DAT's AdaptiveAvgPool2d backward have no deterministic CUDA kernel (only a GPU raises; here
    the replacements are checked to compute the same thing). tests/gpu/run.sh runs them on CUDA."""
    import torch.nn.functional as F

    from awm.models.discriminators import upsample2x
    from awm.train.components import GlobalMean, deterministic_pools

    x = torch.rand(2, 3, 5, 7, requires_grad=True)
    reference = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    (g_ref,) = torch.autograd.grad(reference.square().sum(), x)
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            out = upsample2x(x)
    finally:
        torch.use_deterministic_algorithms(was)
    assert not any("upsample_bilinear" in e.name for e in prof.events())
    (g,) = torch.autograd.grad(out.square().sum(), x)
    assert torch.allclose(out, reference, atol=1e-6) and torch.allclose(g, g_ref, atol=1e-5)
    for arch in ("hat-tiny", "dat-tiny"):
        model = build_model(arch, 2).eval()
        keys, lr = list(model.state_dict()), torch.rand(2, 3, 16, 16)
        with torch.no_grad():
            before = model(lr)
            assert deterministic_pools(model) > 0
            assert torch.allclose(model(lr), before, atol=1e-5)
        assert list(model.state_dict()) == keys
        assert not any(isinstance(m, nn.AdaptiveAvgPool2d) for m in model.modules())
        assert any(isinstance(m, GlobalMean) for m in model.modules())


def test_window_attention_models_are_built_for_the_training_patch(accelerator):
    """SwinIR's masks for img_size (default 64) were rebuilt on the CPU at every forward of a
    32 px LR patch; the run builds them for its patch and records img_size in its hparams."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    cfg = TrainConfig(model=ModelConfig(arch="swinir-tiny"), gan_start=10, steps=10)
    cfg.data.patch, cfg.data.scale, cfg.ema.enabled = 64, 2, False
    c = build_components(cfg, "no")
    assert cfg.model.hparams["img_size"] == 32
    blocks = [m for m in c.generator_plain.modules() if hasattr(m, "input_resolution") and hasattr(m, "attn_mask")]
    assert blocks and all(tuple(b.input_resolution) == (32, 32) for b in blocks)


def test_models_are_prepared_then_compiled_and_ddp_skips_buffer_broadcasts(accelerator):
    """torch.compile wraps what Accelerate prepared (DDP on several processes), as Accelerate's own
    dynamo plugin does, so DDP's all-reduce overlaps the backward; DDP does not re-send buffers."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    cfg = TrainConfig(model=ModelConfig(arch="compact-tiny", compile="default"), gan_start=0, steps=10)
    cfg.data.patch, cfg.loss.perceptual.vgg_weight, cfg.loss.perceptual.anime_weight = 32, 0.0, 0.0
    c = build_components(cfg, "no")
    acc = c.accelerator
    assert [id(m) for m in acc._models] == [id(c.discriminator._orig_mod), id(c.generator._orig_mod)]
    assert acc.ddp_handler is not None and acc.ddp_handler.broadcast_buffers is False

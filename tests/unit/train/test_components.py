"""One step's pieces on the CPU: fp16 gradient unscaling with a real GradScaler, precision refused by
architecture, saved state keys without wrapper prefixes, EMA without per-step copies."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from awm.errors import ConfigError
from awm.models.archs import build_model, model_info
from awm.train.components import Components, apply_update, bare_key, build_components, make_optimizer
from awm.train.config import ModelConfig, TrainConfig
from awm.train.ema import EMA, EMAConfig


@pytest.fixture
def accelerator():
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    acc = Accelerator(cpu=True)
    yield acc
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def test_fp16_gan_steps_equal_adamw_on_unscaled_gradients_and_the_scaler_updates_once(accelerator):
    """fp16 runs carry a GradScaler. Accelerate's optimizer step runs scaler.step then
    scaler.update() per optimizer, and update() forgets that D was unscaled: D's fused AdamW got the
    scale again (its updates were ~0.13x AdamW's) and the scale moved twice a step. Three GAN steps
    with a real GradScaler at 2^16 and Accelerate's optimizers: every parameter lands where AdamW
    on the unscaled gradients (clipped per group) puts it, and the growth tracker moves once a step.
    Accelerate gives a CPU no GradScaler, so the test hands it torch's CPU one (the same class,
    device 'cpu') and the fp16 flags it sets on a GPU."""
    import copy

    acc = accelerator
    acc.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    acc.native_amp, acc.state._mixed_precision = True, "fp16"  # what Accelerate sets for fp16 on a GPU
    torch.manual_seed(0)
    g, d = build_model("compact-tiny", 2), nn.Conv2d(3, 1, 3)
    ref_g, ref_d = copy.deepcopy(g), copy.deepcopy(d)
    g_opt = make_optimizer(list(g.parameters()), 1e-2, (0.9, 0.99), 0.0, acc.device, deepspeed=False)
    d_opt = make_optimizer(list(d.parameters()), 1e-2, (0.9, 0.99), 0.0, acc.device, deepspeed=False)
    ref_opts = [torch.optim.AdamW(m.parameters(), lr=1e-2, betas=(0.9, 0.99), weight_decay=0.0, foreach=False)
                for m in (ref_g, ref_d)]
    pg, g_opt, pd, d_opt = acc.prepare(g, g_opt, d, d_opt)
    c = Components(acc, model_info("compact-tiny", 2), False, pg, g, list(g.parameters()), g_opt, nn.L1Loss(),
                   discriminator=pd, discriminator_plain=d, adversary=d, discriminator_params=list(d.parameters()),
                   discriminator_optimizer=d_opt)
    clip = 0.05  # below the generator's gradient norm: clipping acts on the unscaled gradients
    for step in range(3):
        x = torch.rand(2, 3, 8, 8)
        # the prepared models run under fp16 autocast; 0.25 keeps D's bias gradient (2^16 x the
        # mean sign) inside fp16's range, so no step is skipped for an overflow
        loss = pg(x).abs().mean() + 0.25 * pd(x).abs().mean()
        acc.backward(loss)  # scaled by 2^16
        found_inf, norms = apply_update(c, gan=True, grad_clip=clip, step_loss=loss.detach(), world_size=1)
        with torch.autocast("cpu", dtype=torch.float16):  # the prepared forward: fp16, outputs made fp32
            ref_g_out, ref_d_out = ref_g(x).float(), ref_d(x).float()
        ref_loss = ref_g_out.abs().mean() + 0.25 * ref_d_out.abs().mean()
        (ref_loss * 2.0 ** 16).backward()  # the same fp16 gradients, then unscaled exactly (a power of two)
        for q in list(ref_g.parameters()) + list(ref_d.parameters()):
            q.grad /= 2.0 ** 16
        ref_norms = [torch.nn.utils.clip_grad_norm_(list(m.parameters()), clip) for m in (ref_g, ref_d)]
        for opt in ref_opts:
            opt.step()
            opt.zero_grad()
        assert float(found_inf) == 0.0
        assert [float(n) for n in norms] == pytest.approx([float(n) for n in ref_norms], rel=1e-4)
        for name, mine, ref in (("G", g, ref_g), ("D", d, ref_d)):
            for p, q in zip(mine.parameters(), ref.parameters(), strict=True):
                # fused and single-tensor AdamW on the same gradients agree to ~1e-8; D's gradients
                # unscaled twice (then clipped and stepped) put its weights ~7e-4 off at the first step
                assert torch.allclose(p, q, rtol=0, atol=1e-5), (name, step, float((p - q).abs().max()))
        assert acc.scaler.state_dict()["_growth_tracker"] == step + 1  # one update() a step
    assert acc.scaler.get_scale() == 2.0 ** 16


def test_fp16_is_refused_at_start_for_architectures_spandrel_marks_unsafe_in_half():
    for arch in ("swinir-tiny", "hat-tiny", "dat-tiny", "grl-tiny"):
        assert not model_info(arch, 2).supports_fp16
        cfg = TrainConfig(model=ModelConfig(arch=arch))
        with pytest.raises(ConfigError, match=f"precision.*fp16.*fp32 or bf16 for {arch}.*supports_half=False"):
            build_components(cfg, "fp16", None)


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
    c = build_components(cfg, "no", None)
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
    c = build_components(cfg, "no", None)
    acc = c.accelerator
    assert [id(m) for m in acc._models] == [id(c.discriminator._orig_mod), id(c.generator._orig_mod)]
    assert acc.ddp_handler is None  # no broadcast_buffers kwarg: torch warns about it (skip_buffer_broadcasts)


def test_ddp_skips_buffer_broadcasts_without_a_deprecation_warning(tmp_path):
    """What build_components does to each DDP-wrapped model: no buffer re-sent per forward, and no
    FutureWarning per rank (torch >= 2.13 deprecates the broadcast_buffers argument)."""
    import warnings

    import torch.distributed as tdist

    from awm.train.components import skip_buffer_broadcasts

    tdist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            ddp = nn.parallel.DistributedDataParallel(nn.BatchNorm2d(3))
            skip_buffer_broadcasts(ddp)
        assert not ddp.will_sync_module_buffers()
    finally:
        tdist.destroy_process_group()


DEEPSPEED_TOGGLE = """
import os, sys
from pathlib import Path
import torch
tmp = Path(sys.argv[1])
torch.distributed.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=0, world_size=1)
from accelerate.state import AcceleratorState, GradientState
from awm.train.components import build_components
from awm.train.config import ModelConfig, TrainConfig

def build(mode):
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    torch.manual_seed(len(mode))  # other initial weights per build: a load must overwrite them
    cfg = TrainConfig(model=ModelConfig(arch="compact-tiny", compile=mode), gan_start=10, steps=10, seed=len(mode))
    cfg.data.patch, cfg.ema.enabled = 32, False
    return build_components(cfg, "bf16", None)

for first, then in (("default", "none"), ("none", "default")):
    c = build(first)
    assert c.deepspeed
    c.accelerator.save_state(str(tmp / first))
    saved = torch.load(next((tmp / first).rglob("mp_rank_00_model_states.pt")), weights_only=False)["module"]
    assert saved and not any(k.startswith(("_orig_mod.", "module.")) for k in saved), list(saved)
    again = build(then)
    again.accelerator.load_state(str(tmp / first))  # DeepSpeed loads the module strictly
    loaded = again.generator_plain.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in saved.items())
    print("resumed", first, "->", then)

from awm.errors import ConfigError
for precision in ("bf16", "fp16"):  # a GAN stage: the discriminator outside the engine, float32, torch's AdamW
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    cfg = TrainConfig(model=ModelConfig(arch="compact-tiny"), gan_start=5, steps=10)
    cfg.data.patch, cfg.ema.enabled = 32, False
    cfg.loss.perceptual.vgg_weight = cfg.loss.perceptual.anime_weight = 0.0  # no backbone files here
    try:
        c = build_components(cfg, precision, None)
    except ConfigError as e:
        print("refused", precision, e.key)
        continue
    assert {p.dtype for p in c.discriminator_params} == {torch.float32}
    assert type(c.discriminator_optimizer) is torch.optim.AdamW and c.discriminator is c.discriminator_plain
    print("gan", precision)
torch.distributed.destroy_process_group()
"""


def test_deepspeed_states_resume_across_a_compile_toggle(tmp_path):
    """DeepSpeed's engine saves what its module's state_dict() says and loads it strictly, past
    Accelerate's key hooks: a compiled generator saved ``_orig_mod.`` keys, and a run resumed with
    model.compile toggled failed ("Missing key(s) ... Unexpected key(s) _orig_mod.body.0.weight").
    Real DeepSpeed (ZeRO-2, bf16, CPU accelerator, one gloo process) through Accelerate, in a
    subprocess (its process group and DeepSpeed's globals stay out of this one). Nothing is
    compiled: torch.compile builds lazily, at the first forward, and keys do not need one."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}
    env.update({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(root / "launch" / "ds-zero2.json"),
                "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1", "CUDA_VISIBLE_DEVICES": "",
                "OMP_NUM_THREADS": "1"})
    r = subprocess.run([sys.executable, "-c", DEEPSPEED_TOGGLE, str(tmp_path)], env=env, capture_output=True, text=True,
                       timeout=600, cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    resumed = [x for x in r.stdout.splitlines() if x.startswith("resumed ")]  # DeepSpeed prints to stdout too
    assert resumed == ["resumed default -> none", "resumed none -> default"], r.stdout[-3000:]
    gan = [x for x in r.stdout.splitlines() if x.startswith(("gan ", "refused "))]
    assert gan == ["gan bf16", "refused fp16 precision"], r.stdout[-3000:]

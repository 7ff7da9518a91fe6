"""Every CUDA path of AWM checked and measured on one GPU, in two device calls (see RECIPE).

Why: the CI machines have no GPU, so the CUDA-only behaviour (fused AdamW's device-side skip,
the side-stream prefetcher, the device degradation, sync-free steady steps, bf16/fp16/compile/
deterministic runs, ``awm upscale`` on a chosen GPU, ONNX on CUDA) is only ever exercised here.
Start it through ``tests/gpu/run.sh`` (it installs the carried wheels first); see
``tests/gpu/README.md``.

Each section runs in its own process with its own time limit (a crash, a hang or a CUDA error
in one does not stop the others) and asserts the property it is named after. Its result is
appended to ``--out`` as one JSON line (and printed) the moment it ends, so a run killed by the
device's time limit keeps every section it finished. Check sections run ``--jobs`` at a time;
timed sections run afterwards, one at a time, alone on the GPU, warmed up and synchronised.
Exit status: 0 all ran sections passed, 1 some failed, 2 bad arguments, 3 no CUDA GPU (nothing
run; ``--cpu-dry-run`` runs the driver and the CPU-capable sections on the CPU with tiny sizes).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

# Which issue-21 defect or issue-29 item each section exercises on a GPU.
DEFECTS = {
    "21.1 deepspeed+bf16": ["deepspeed_bf16"], "21.2 fp16+GAN clipping": ["train_fp16_gan_clip"],
    "21.3 deterministic on CUDA": ["train_deterministic_hat_gan"],
    "21.4 compile reduce-overhead": ["train_compile_reduce_overhead_gan_accum2", "train_compile_default"],
    "21.5 device JPEG": ["degrade_cuda_vs_cpu", "sync_steady_steps"], "21.6 silent CPU fallback": ["device_cuda"],
    "21.7 NCCL timeout": ["multi_rank_note"], "21.8 speed": ["bench_train", "bench_degrade", "upscale_bf16"],
    "21.9 resume across compile": ["resume_compile_toggle"], "21.10 stop latency": ["stop_latency"],
    "21.11 tests sealed from a GPU": ["multi_rank_sealed"],
    "29.1 fp16 GAN double unscale": ["train_fp16_gan_clip"], "29.2 deepspeed bf16 + LDL": ["deepspeed_bf16", "train_artifact_losses"],
    "29.3 upscale on cuda:N": ["upscale_device_scope"], "29.4 onnx on CUDA": ["onnx_cuda"],
}


@dataclass
class Ctx:
    work: Path
    cuda: bool
    dry: bool

    @property
    def slow(self) -> float:
        """Time limits' factor: the dry run's tiny sizes still run slowly on a (shared) CPU."""
        return 4.0 if self.dry else 1.0

    @property
    def device(self) -> str:
        return "cuda" if self.cuda else "cpu"


# -- data -------------------------------------------------------------------------------------------

def make_data(work: Path) -> None:
    """Generated shards: pairs for x2/x4 (train, eval) and HR-only ones for on-the-fly degradation."""
    from pairs import make_pair_shards

    make_pair_shards(work / "train", [8, 8], scales=(2, 4), size=(128, 128))
    make_pair_shards(work / "eval", [4], scales=(2, 4), size=(128, 128), seed=1, split="eval")
    make_pair_shards(work / "hr", [8, 8], scales=(2, 4), size=(192, 192), seed=2, hr_only=True)


# -- helpers ----------------------------------------------------------------------------------------

def awm(ctx: Ctx, args: list[str], timeout: float, env: dict[str, str] | None = None,
        expect: int = 0) -> subprocess.CompletedProcess:
    """``python -m awm ARGS``; AssertionError with the output's tail unless it exits ``expect``."""
    p = subprocess.run([sys.executable, "-m", "awm", *args], cwd=ctx.work, capture_output=True, text=True,
                       timeout=timeout * ctx.slow, env={**os.environ, **(env or {})})
    if p.returncode != expect:
        raise AssertionError(f"awm {' '.join(args[:3])} exited {p.returncode} (expected {expect}):\n"
                             + (p.stdout + p.stderr)[-3000:])
    return p


def train_args(ctx: Ctx, name: str, steps: int, gan_start: int, *extra: str, device_degrade: bool = True) -> list[str]:
    """A tiny 2x run (tiny-cpu recipe: Compact 32x12) on the generated shards."""
    data = [f"data.train={ctx.work / 'hr'}", "data.degrade=realesrgan", "data.degrade_on=device"] \
        if device_degrade else [f"data.train={ctx.work / 'train'}"]
    return ["train", "--config", "tiny-cpu", f"runs={ctx.work / 'runs'}", f"name={name}", f"steps={steps}",
            f"gan_start={gan_start}", *data, f"data.eval={ctx.work / 'eval'}", "data.batch_size=8",
            "data.workers=2", "log.every=5", "validation.every=0", "validation.max_images=4",
            "checkpoint.state_every=1000000", *(["precision=fp32"] if not ctx.cuda else []), *extra]


def run_stats(ctx: Ctx, name: str) -> dict[str, Any]:
    """train_stats.json of a run, checked: finished, no non-finite step, finite validation."""
    stats = json.loads((ctx.work / "runs" / name / "train_stats.json").read_text())
    assert stats["status"] == "done", stats["status"]
    assert stats["nan_skips"] == 0, f"{stats['nan_skips']} non-finite steps"
    psnr = stats["validation"].get("psnr_y")
    assert psnr is not None and math.isfinite(psnr), stats["validation"]
    return {"psnr_y": round(psnr, 3), "wall_s": stats["wall_s"], "precision": stats["precision"]}


def samples_per_s(log_text: str) -> float | None:
    """The last 'N samples/s' the trainer logged."""
    rates = [float(w[i - 1]) for w in (ln.split() for ln in log_text.splitlines()) for i, t in enumerate(w)
             if t == "samples/s" and i > 0]
    return rates[-1] if rates else None


def sync_counter() -> Callable[[Callable[[], Any]], tuple[Any, int, list[str]]]:
    """Runs a callable under ``torch.cuda.set_sync_debug_mode('warn')``; returns (result, syncs, messages)."""
    import torch

    def run(fn: Callable[[], Any]) -> tuple[Any, int, list[str]]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                out = fn()
            finally:
                torch.cuda.set_sync_debug_mode(0)
        msgs = [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message)]
        return out, len(msgs), msgs[:3]

    return run


# -- sections ---------------------------------------------------------------------------------------

def sec_env(ctx: Ctx) -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {"python": sys.version.split()[0], "torch": torch.__version__,
                           "cuda_build": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    if ctx.cuda:
        out |= {"gpu": torch.cuda.get_device_name(), "capability": list(torch.cuda.get_device_capability()),
                "memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
                "bf16": torch.cuda.is_bf16_supported()}
    for mod in ("torchvision", "accelerate", "cv2", "spandrel", "webdataset", "wids", "deepspeed", "pyiqa"):
        try:
            out[mod] = getattr(__import__(mod), "__version__", "present")
        except Exception as e:  # noqa: BLE001 - recorded: an absent optional package is a figure here
            out[mod] = f"absent ({type(e).__name__})"
    return out


def sec_fused_adamw_found_inf(ctx: Ctx) -> dict[str, Any]:
    """awm's optimiser is fused on the device, and a found_inf flag of 1 skips the step entirely
    (parameters, moments and step count unchanged), 0 applies it: the trainer's non-finite skip."""
    import torch

    from awm.train.components import make_optimizer

    dev = torch.device(ctx.device)
    p = torch.nn.Parameter(torch.randn(4096, device=dev))
    opt = make_optimizer([p], 1e-2, (0.9, 0.99), 0.01, dev, False)
    assert opt.defaults.get("fused"), "awm's AdamW is not fused on this device"
    p.grad = torch.randn_like(p)
    opt.step()
    state = opt.state[p]
    before = {k: v.clone() for k, v in state.items()}, p.detach().clone()
    opt.found_inf = torch.ones((), device=dev)
    p.grad = torch.randn_like(p)
    opt.step()
    for k, v in state.items():
        assert torch.equal(v, before[0][k]), f"state {k} changed on a skipped step"
    assert torch.equal(p.detach(), before[1]), "parameters changed on a skipped step"
    opt.found_inf = torch.zeros((), device=dev)
    opt.step()
    assert not torch.equal(p.detach(), before[1]), "the step with found_inf=0 did not update"
    assert float(state["step"]) == 2.0, state["step"]
    return {"fused": True, "skip_and_apply": "ok"}


def sec_prefetcher_stress(ctx: Ctx) -> dict[str, Any]:
    """DevicePrefetcher under a busy compute stream: every batch arrives intact (each pinned batch
    is filled with its index; a copy racing the step or a reused block would show another)."""
    import torch

    from awm.train.perf import DevicePrefetcher

    dev = torch.device(ctx.device)
    n, b = (20, 2) if ctx.dry else (600, 16)

    def batches():
        for i in range(n):
            hr = torch.full((b, 256, 256, 3), i % 251, dtype=torch.uint8)
            lr = torch.full((b, 64, 64, 3), (i * 7) % 251, dtype=torch.uint8)
            yield {"hr": hr.pin_memory() if ctx.cuda else hr, "lr": lr.pin_memory() if ctx.cuda else lr}

    work = torch.randn(2048, 2048, device=dev)
    bad = torch.zeros((), device=dev)
    t0 = time.perf_counter()
    for i, batch in enumerate(DevicePrefetcher(batches(), dev)):
        for _ in range(2 if ctx.cuda else 0):
            work = torch.tanh(work @ work * 1e-3)  # keep the compute stream busy while the next copy runs
        bad += (batch["hr"] != i % 251).sum() + (batch["lr"] != (i * 7) % 251).sum()
        del batch
    bad_n = int(bad)
    assert bad_n == 0, f"{bad_n} corrupted bytes"
    return {"batches": n, "batch": b, "seconds": round(time.perf_counter() - t0, 2)}


def _op_records() -> dict[str, list[dict[str, Any]]]:
    def rec(ops: list[dict[str, Any]], scale: int = 1, fmt: str = "png", q: int | None = None) -> dict[str, Any]:
        return {"preset": "gpu", "scale": scale, "ops": ops, "codec": {"format": fmt, "quality": q}}

    g = {"op": "blur", "theta": 0.0}
    return {
        "blur": [rec([{**g, "ksize": 7, "sigma_x": 1.2, "sigma_y": 1.2}]),
                 rec([{**g, "ksize": 13, "sigma_x": 2.5, "sigma_y": 0.7, "theta": 0.6}]),
                 rec([{**g, "ksize": 9, "sigma_x": 1.5, "sigma_y": 1.5, "kind": "generalized", "beta": 0.6}]),
                 rec([{**g, "ksize": 15, "sigma_x": 2.0, "sigma_y": 0.5, "theta": 1.0, "kind": "plateau",
                       "beta": 1.5}]),
                 rec([{"op": "blur", "kind": "sinc", "ksize": 21, "omega": 1.1}])],
        **{f"resize_{m}": [rec([{"op": "resize", "size": list(t), "interp": m},
                                {"op": "resize", "size": [48, 36], "interp": "area"}], scale=2)
                           for t in [(37, 29), (144, 108), (96, 72), (120, 50)]]
           for m in ("area", "bilinear", "bicubic", "lanczos")},
        "median": [rec([{"op": "median", "ksize": k, "edge_mask": None}]) for k in (3, 5)],
        "usm": [rec([{"op": "usm", "amount": 0.5, "sigma": 1.0, "ksize": 5, "threshold": 0}]),
                rec([{"op": "usm", "amount": 1.3, "sigma": 2.0, "ksize": 9, "threshold": 10}])],
        "jpeg": [rec([{"op": "jpeg", "quality": q}]) for q in range(30, 96, 5)],
    }


def sec_degrade_cuda_vs_cpu(ctx: Ctx) -> dict[str, Any]:
    """Each device op on CUDA against the same op on the CPU (and the JPEG against cv2): PSNR and
    max difference per op; the JPEG must be bit-exact; then the host syncs of a whole
    ``realesrgan`` batch on the device (zero expected) and its pairs/s."""
    import cv2
    import numpy as np
    import torch

    from awm.data import degrade
    from awm.data.degrade_device import degrade_batch
    from awm.data.synth import generate

    dev = torch.device(ctx.device)
    imgs = np.stack([generate(11, 96, 72), np.clip(generate(12, 96, 72).astype(float)
                                                   + np.random.default_rng(0).normal(0, 14, (72, 96, 3)),
                                                   0, 255).astype(np.uint8)])
    out: dict[str, Any] = {}
    for op, recs in _op_records().items():
        pairs = [(i, r) for r in recs for i in range(2)]
        hr = torch.from_numpy(imgs[[i for i, _ in pairs]])
        params = [r for _, r in pairs]
        a = degrade_batch(hr, params, params[0]["scale"]).numpy().astype(np.float64)
        b = degrade_batch(hr.to(dev), params, params[0]["scale"]).cpu().numpy().astype(np.float64)
        mse = float(np.mean((a - b) ** 2))
        out[op] = {"psnr_vs_cpu": None if mse == 0 else round(10 * math.log10(255**2 / mse), 2),
                   "max_abs": int(np.abs(a - b).max())}
        assert mse == 0 or out[op]["psnr_vs_cpu"] >= 45, (op, out[op])
    for r in _op_records()["jpeg"]:
        q = r["ops"][0]["quality"]
        got = degrade_batch(torch.from_numpy(imgs).to(dev), [r, r], 1).cpu().numpy()
        for img, g in zip(imgs, got, strict=True):
            buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, q])[1]
            want = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            assert np.array_equal(g, want), f"device JPEG q{q} differs from cv2 (max {np.abs(g.astype(int) - want).max()})"
    out["jpeg_bit_exact_vs_cv2"] = True
    preset = degrade.get_preset("realesrgan")
    b = 4 if ctx.dry else 32
    hr = torch.from_numpy(np.stack([generate(100 + k, 256, 256) for k in range(b)])).to(dev)
    params = [degrade.draw_params(preset, (256, 256), 4, 7, f"k{k}") for k in range(b)]
    degrade_batch(hr, params, 4)
    if ctx.cuda:
        _, syncs, msgs = sync_counter()(lambda: degrade_batch(hr, params, 4))
        out["realesrgan_batch_syncs"], out["sync_messages"] = syncs, msgs
        torch.cuda.synchronize()
    reps = 2 if ctx.dry else 10
    t0 = time.perf_counter()
    for _ in range(reps):
        degrade_batch(hr, params, 4)
    if ctx.cuda:
        torch.cuda.synchronize()
    out["realesrgan_pairs_per_s_hr256"] = round(reps * b / (time.perf_counter() - t0), 1)
    assert out.get("realesrgan_batch_syncs", 0) == 0, out["sync_messages"]
    return out


def sec_sync_steady_steps(ctx: Ctx) -> dict[str, Any]:
    """Host syncs inside ``Trainer.train_step`` at steady L1 and GAN steps (device degradation on,
    bf16): zero expected. The trainer reads the device only at log steps, outside train_step."""
    import torch

    from awm.train import trainer as trainer_mod
    from awm.train.config import load_config
    from awm.train.train import train

    steps, gan_start = (8, 4) if ctx.dry else (40, 20)
    window = set(range(2, 4)) | set(range(6, 8)) if ctx.dry else set(range(8, 18)) | set(range(28, 38))
    counts: dict[int, int] = {}
    messages: list[str] = []
    orig = trainer_mod.Trainer.train_step
    count = sync_counter() if ctx.cuda else None

    def counted(self: Any) -> None:
        step = self.state.step
        if count is None or step not in window:
            return orig(self)
        _, n, msgs = count(lambda: orig(self))
        counts[step] = n
        messages.extend(msgs[: 3 - len(messages)])
        return None

    trainer_mod.Trainer.train_step = counted
    args = train_args(ctx, "sync", steps, gan_start, "log.every=1000")[3:]
    stats = train(load_config("tiny-cpu", args))
    assert stats["status"] == "done", stats
    total = sum(counts.values())
    if ctx.cuda:
        assert counts and total == 0, f"{total} host syncs in {len(counts)} steady steps: {messages}"
    return {"steps_counted": len(counts), "syncs": total, "messages": messages,
            "per_step": {str(k): v for k, v in sorted(counts.items()) if v}, "cuda": torch.cuda.is_available()}


def sec_train_e2e(ctx: Ctx) -> dict[str, Any]:
    """``awm train``: L1 then GAN stage, realesrgan degradation on the device, default precision."""
    steps = 10 if ctx.dry else 120
    p = awm(ctx, train_args(ctx, "e2e", steps, steps // 2), 170)
    out = run_stats(ctx, "e2e")
    ckpt = ctx.work / "runs" / "e2e" / "checkpoints"
    assert any(ckpt.iterdir()), "no checkpoint written"
    return out | {"samples_per_s_shared_gpu": samples_per_s(p.stderr + p.stdout)}


def _variant(ctx: Ctx, name: str, *extra: str, steps: int = 30, gan: bool = True, timeout: float = 170,
             env: dict[str, str] | None = None) -> dict[str, Any]:
    n = 6 if ctx.dry else steps
    p = awm(ctx, train_args(ctx, name, n, n // 2 if gan else n, *extra), timeout, env)
    # beside other check sections on the same GPU: a sign of life, not a throughput figure
    return run_stats(ctx, name) | {"samples_per_s_shared_gpu": samples_per_s(p.stderr + p.stdout)}


def sec_train_bf16(ctx: Ctx) -> dict[str, Any]:
    return _variant(ctx, "bf16", *(["precision=bf16"] if ctx.cuda else []))


def reference_adamw(opt: Any, params: list[Any], scale: float, clip: float) -> Any:
    """The update plain AdamW (fp32, not fused) makes from ``params``' gradients divided by
    ``scale`` once and clipped to ``clip`` (torch's clip_grad_norm_ formula), starting from
    ``opt``'s own moments and step count: what one correct fp16 step must do. Returns the deltas
    flattened into one tensor."""
    import torch

    grads = [p.grad.detach().float() / scale for p in params]
    if clip:
        total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        grads = [g * torch.clamp(clip / (total + 1e-6), max=1.0) for g in grads]
    group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
    deltas = []
    for p, g in zip(params, grads, strict=True):
        group, state = group_of[id(p)], opt.state.get(p, {})
        q = p.detach().clone().float().requires_grad_(True)
        q.grad = g
        ref = torch.optim.AdamW([q], lr=float(group["lr"]), betas=tuple(float(b) for b in group["betas"]),
                                eps=group["eps"], weight_decay=group["weight_decay"], foreach=False, fused=False)
        if state:
            ref.state[q] = {"step": torch.tensor(float(state["step"])), "exp_avg": state["exp_avg"].float().clone(),
                            "exp_avg_sq": state["exp_avg_sq"].float().clone()}
        ref.step()
        deltas.append((q.detach() - p.detach().float()).flatten())
    return torch.cat(deltas)


def sec_train_fp16_gan_clip(ctx: Ctx) -> dict[str, Any]:
    """fp16 (GradScaler) in the GAN stage with ``optim.grad_clip=1``: at every step, each optimizer's
    (G's and D's) update equals plain AdamW on the gradients unscaled once and clipped (a double
    unscale shrinks D's to ~0.13x), a skipped step changes nothing, and the scaler updates once a
    step (its growth tracker +1, or 0 after an overflow). The dry run checks the same in fp32 on the
    CPU (no scaler): the check itself, not fp16."""
    import torch

    from awm.train import trainer as trainer_mod
    from awm.train.config import load_config
    from awm.train.train import train

    rows: list[dict[str, Any]] = []
    trackers: list[tuple[int, int]] = []
    orig_update, orig_step = trainer_mod.apply_update, trainer_mod.Trainer.train_step

    def checked_update(c: Any, gan: bool, grad_clip: float, *rest: Any, **kw: Any) -> Any:
        scaler = c.accelerator.scaler
        scale = float(scaler.get_scale()) if scaler is not None else 1.0
        before = []
        for name, opt in zip(("G", "D"), c.optimizers(gan), strict=False):
            inner = getattr(opt, "optimizer", opt)
            params = [p for g in inner.param_groups for p in g["params"] if p.grad is not None]
            before.append((name, params, [p.detach().clone() for p in params],
                           reference_adamw(inner, params, scale, grad_clip)))
        found_inf, norms = orig_update(c, gan, grad_clip, *rest, **kw)
        skipped = bool(float(found_inf))
        for name, params, old, ref in before:
            got = torch.cat([(p.detach().float() - o.float()).flatten() for p, o in zip(params, old, strict=True)])
            if skipped:
                rows.append({"opt": name, "skipped": True, "moved": float(got.abs().max())})
            else:
                rows.append({"opt": name, "skipped": False, "ratio": float(got.norm() / ref.norm().clamp_min(1e-30)),
                             "rel_err": float((got - ref).norm() / ref.norm().clamp_min(1e-30))})
        return found_inf, norms

    def tracked_step(self: Any) -> Any:
        scaler = self.c.accelerator.scaler
        t0 = getattr(scaler, "_growth_tracker", None)
        t0 = None if t0 is None else int(t0)
        out = orig_step(self)
        if t0 is not None:
            trackers.append((t0, int(scaler._growth_tracker)))
        return out

    trainer_mod.apply_update, trainer_mod.Trainer.train_step = checked_update, tracked_step
    extra = ["precision=fp16"] if ctx.cuda else []
    stats = train(load_config("tiny-cpu", train_args(ctx, "fp16", 16 if ctx.cuda else 6, 4 if ctx.cuda else 2,
                                                     *extra, "optim.grad_clip=1.0", "log.every=1000")[3:]))
    assert stats["status"] == "done", stats["status"]
    applied = [r for r in rows if not r["skipped"]]
    for opt in ("G", "D"):
        assert any(r["opt"] == opt for r in applied), f"no applied {opt} step to check: {rows}"
    bad = [r for r in applied if r["rel_err"] > 1e-2] + [r for r in rows if r["skipped"] and r["moved"] != 0]
    assert not bad, f"updates that are not AdamW on the once-unscaled, clipped gradients: {bad[:6]}"
    if ctx.cuda:
        assert trackers, "no GradScaler in an fp16 run"
        twice = [t for t in trackers if t[1] not in (t[0] + 1, 0)]
        assert not twice, f"the scaler did not update exactly once a step (growth tracker before, after): {twice}"
    worst = {o: max((r["rel_err"] for r in applied if r["opt"] == o), default=None) for o in ("G", "D")}
    return {"checked_steps": len(rows), "skipped_steps": len(rows) - len(applied), "worst_rel_err": worst,
            "update_ratio_vs_reference": {o: [round(r["ratio"], 4) for r in applied if r["opt"] == o][:8]
                                          for o in ("G", "D")},
            "scaler_tracker": trackers[:8]}


def _nondeterminism_warnings(caught: list[Any]) -> list[str]:
    return [str(w.message).splitlines()[0][:200] for w in caught if "deterministic" in str(w.message)]


def sec_train_deterministic_hat_gan(ctx: Ctx) -> dict[str, Any]:
    """deterministic=true, GAN stage, a window-attention generator (HAT's AdaptiveAvgPool2d backward,
    the U-Net discriminator's interpolate backward, the device median): run 1 with
    ``use_deterministic_algorithms`` strict (warn_only forced off: an op without a deterministic
    kernel raises, naming itself), run 2 as awm configures it with every warning caught (none may
    say an op is nondeterministic); both end with bitwise equal weights."""
    import torch
    from safetensors.torch import load_file

    from awm.train.config import load_config
    from awm.train.train import train

    strict = torch.use_deterministic_algorithms
    out: dict[str, Any] = {}
    weights = []
    for k in range(2):
        args = train_args(ctx, f"det{k}", 6 if ctx.dry else 16, 3 if ctx.dry else 8, "deterministic=true",
                          "model.arch=hat-tiny", "model.hparams={}", "data.patch=32", "log.every=1000")[3:]
        if k == 0:
            torch.use_deterministic_algorithms = lambda mode, *, warn_only=False: strict(mode, warn_only=False)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                stats = train(load_config("tiny-cpu", args))
        finally:
            torch.use_deterministic_algorithms = strict
        assert stats["status"] == "done", stats["status"]
        said = _nondeterminism_warnings(caught)
        assert not said, f"run {k}: nondeterministic ops warned: {said[:5]}"
        out[f"run{k}_warnings_caught"] = len(caught)
        weights.append(load_file(str(ctx.work / "runs" / f"det{k}" / "checkpoints" / "last" / "model.safetensors")))
    a, b = weights
    same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert same, "two deterministic runs differ"
    return out | {"strict_run": "ok", "bitwise_equal_runs": same}


def sec_train_compile_default(ctx: Ctx) -> dict[str, Any]:
    return _variant(ctx, "compile", "model.compile=default", steps=30, timeout=280)


def sec_train_compile_reduce_overhead_gan_accum2(ctx: Ctx) -> dict[str, Any]:
    """CUDA graphs (reduce-overhead) in the GAN stage with gradient accumulation, in this process:
    every ``CUDAGraph.replay`` is counted, and inductor must have skipped no graph
    (``counters['inductor']['cudagraph_skips']``): a compile that silently ran without graphs fails."""
    import torch
    from torch._dynamo.utils import counters

    from awm.train.config import load_config
    from awm.train.train import train

    replays = {"n": 0}
    orig = torch.cuda.CUDAGraph.replay

    def counted(self: Any) -> Any:
        replays["n"] += 1
        return orig(self)

    torch.cuda.CUDAGraph.replay = counted
    try:
        stats = train(load_config("tiny-cpu", train_args(ctx, "cudagraphs", 30, 15, "model.compile=reduce-overhead",
                                                         "optim.accum=2")[3:]))
    finally:
        torch.cuda.CUDAGraph.replay = orig
    assert stats["status"] == "done", stats["status"]
    skips = int(counters["inductor"]["cudagraph_skips"])
    assert skips == 0, f"inductor skipped CUDA graphs {skips} times (see the log for 'skipping cudagraphs')"
    assert replays["n"] > 0, "no CUDA graph was replayed"
    return run_stats(ctx, "cudagraphs") | {"cudagraph_replays": replays["n"], "cudagraph_skips": skips}


def sec_resume_compile_toggle(ctx: Ctx) -> dict[str, Any]:
    """A state saved compiled resumes uncompiled, and the other way round."""
    out = {}
    for first, second in (("default", "none"), ("none", "default")):
        name = f"toggle-{first}"
        common = train_args(ctx, name, 10 if ctx.dry else 20, 1000, "checkpoint.state_every=5",
                            device_degrade=False)
        awm(ctx, common + [f"model.compile={first}"], 200)
        more = [a if not a.startswith("steps=") else f"steps={15 if ctx.dry else 30}" for a in common]
        p = awm(ctx, more + [f"model.compile={second}"], 200)
        assert "resumed from" in p.stderr + p.stdout, "the second run did not resume"
        out[f"{first}->{second}"] = run_stats(ctx, name)["psnr_y"]
    return out


def sec_device_cuda(ctx: Ctx) -> dict[str, Any]:
    """device=cuda trains on the GPU; with the GPU hidden it exits 1 naming the missing GPU, no traceback."""
    out = {}
    if ctx.cuda:
        out["with_gpu"] = _variant(ctx, "devcuda", "device=cuda", steps=10, gan=False)
    p = awm(ctx, train_args(ctx, "nogpu", 5, 5, "device=cuda"), 120, env={"CUDA_VISIBLE_DEVICES": ""}, expect=1)
    text = p.stdout + p.stderr
    assert "Traceback" not in text, text[-2000:]
    assert "GPU" in text or "CUDA" in text, text[-2000:]
    out["hidden_gpu_message"] = [ln for ln in text.splitlines() if "GPU" in ln or "CUDA" in ln][-1][-300:]
    return out


STOP_BOUND_S = 30.0  # SIGTERM -> state saved and exit, tiny model on a GPU (x4 on the dry run's CPU)


def sec_stop_latency(ctx: Ctx) -> dict[str, Any]:
    """SIGTERM mid-run with log.every far away: the state is saved and the process exits 75
    (EX_TEMPFAIL, what a requeueing wrapper looks for) within STOP_BOUND_S."""
    import signal

    from awm.train.train import EXIT_PREEMPTED

    args = train_args(ctx, "stop", 100000, 100000, "log.every=100000", device_degrade=False)
    proc = subprocess.Popen([sys.executable, "-m", "awm", *args], cwd=ctx.work, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    run_dir = ctx.work / "runs" / "stop"
    t0 = time.perf_counter()
    while not (run_dir / "config.yaml").exists() and time.perf_counter() - t0 < 120 and proc.poll() is None:
        time.sleep(0.5)
    time.sleep(10 if not ctx.dry else 3)  # into steady training
    sent = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    bound = STOP_BOUND_S * ctx.slow
    try:
        text, _ = proc.communicate(timeout=3 * bound)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"no exit within {3 * bound:.0f} s of SIGTERM") from None
    latency = time.perf_counter() - sent
    assert proc.returncode == EXIT_PREEMPTED, f"exit {proc.returncode}, expected {EXIT_PREEMPTED}:\n{text[-2000:]}"
    assert latency <= bound, f"{latency:.1f} s from SIGTERM to exit, bound {bound:.0f} s"
    assert "preempted" in text or "stop requested" in text, text[-2000:]
    return {"exit": proc.returncode, "seconds_to_exit": round(latency, 1), "bound_s": bound}


ARTIFACT_TERMS = ("ldl", "ffl", "color")


def artifact_args() -> list[str]:
    """LDL (with the EMA generator it needs), FFL and colour losses on."""
    return ["ema.enabled=true", *(f"loss.{t}.weight=0.1" for t in ARTIFACT_TERMS)]


def logged_terms(text: str) -> dict[str, float]:
    """The largest |value| each artifact term reached in the trainer's 'step N/M name value ...' lines."""
    seen: dict[str, float] = {}
    for m in re.finditer(r"\b(" + "|".join(ARTIFACT_TERMS) + r") (-?\d+\.\d+(?:e-?\d+)?)\b", text):
        seen[m[1]] = max(seen.get(m[1], 0.0), abs(float(m[2])))
    missing = [t for t in ARTIFACT_TERMS if seen.get(t, 0.0) <= 0]
    assert not missing, f"loss terms never logged nonzero: {missing} (logged: {seen})"
    return seen


def sec_deepspeed_bf16(ctx: Ctx) -> dict[str, Any]:
    """DeepSpeed ZeRO-2 with bf16 through accelerate launch, one process, the artifact losses on
    (LDL runs the float32 EMA generator on the engine's bf16 batch): it trains, every term is
    logged nonzero, and the engine's saved module really is bfloat16. The dry run is the same on
    the CPU (``device=cpu``: DeepSpeed's CPU accelerator, which a GPU run must never fall back to)."""
    import importlib.util

    import torch

    if importlib.util.find_spec("deepspeed") is None:
        return {"skipped": "deepspeed not installed"}
    cfg = REPO / "launch" / "deepspeed-zero2.yaml"
    steps = 6 if ctx.dry else 30
    args = train_args(ctx, "ds", steps, 1000000, f"checkpoint.state_every={steps}", "log.every=2",
                      *artifact_args(), *(["device=cpu"] if ctx.dry else []), device_degrade=False)[1:]
    args = [a for a in args if not a.startswith("precision=")] + ["precision=bf16"]  # on the CPU too
    p = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(cfg),
                        "--num_processes", "1", "-m", "awm", "train", *args], cwd=REPO,
                       capture_output=True, text=True, timeout=240 * ctx.slow)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    terms = logged_terms(p.stdout + p.stderr)
    states = sorted((ctx.work / "runs" / "ds").rglob("*model_states.pt"))
    assert states, f"no DeepSpeed model state saved under {ctx.work / 'runs' / 'ds'}"
    module = torch.load(states[-1], map_location="cpu", weights_only=False)["module"]
    dtypes = sorted({str(t.dtype) for t in module.values() if torch.is_tensor(t) and t.is_floating_point()})
    assert dtypes == ["torch.bfloat16"], f"the DeepSpeed engine's parameters are {dtypes}, expected bfloat16"
    return run_stats(ctx, "ds") | {"engine_param_dtypes": dtypes, "artifact_terms_max": terms,
                                   "state": str(states[-1].relative_to(ctx.work))}


def sec_train_artifact_losses(ctx: Ctx) -> dict[str, Any]:
    """LDL, FFL and colour losses on (bf16 on the GPU, GAN stage with the EMA model): the run finishes
    and every term is logged nonzero (a term that never reaches the sum, or is always 0, fails)."""
    p = awm(ctx, train_args(ctx, "artifact", 8 if ctx.dry else 30, 2 if ctx.dry else 10, *artifact_args(),
                            "log.every=2"), 200)
    run_stats(ctx, "artifact")
    return {"max_logged": logged_terms(p.stderr + p.stdout)}


def _psnr8(a: Any, b: Any) -> float:
    import numpy as np

    mse = float(np.mean((a.astype(float) - b.astype(float)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def sec_upscale_bf16(ctx: Ctx) -> dict[str, Any]:
    """``awm upscale``'s path (upscale_array, rrdb-6b x4, random weights) in bf16: autocast is really
    on (a probe on the first conv sees bfloat16 outputs inside the autocast region), the result is
    close to fp32 on the CPU (PSNR on a crop), and its input MP/s on a 960x540 image, warmed up
    (one whole image first: cuDNN autotuning, lazy kernels) and synchronised, median of 3."""
    import statistics

    import torch

    from awm.data.synth import generate
    from awm.models.archs import build_model
    from awm.models.checkpoint import load_model, save_checkpoint
    from awm.upscale.infer import upscale_array

    torch.manual_seed(0)
    arch, size, reps = ("compact-tiny", (96, 64), 1) if ctx.dry else ("rrdb-6b", (960, 540), 3)
    ckpt = save_checkpoint(ctx.work / "up-model", build_model(arch, 4), arch, {}, 4, 0)
    model = load_model(str(ckpt), ctx.device)
    torch.backends.cudnn.benchmark = True
    seen: list[tuple[bool, str]] = []
    first_conv = next(m for m in model.module.modules() if isinstance(m, torch.nn.Conv2d))
    hook = first_conv.register_forward_hook(
        lambda _m, _i, out: seen.append((torch.is_autocast_enabled(ctx.device), str(out.dtype))))
    img = generate(5, *size)
    upscale_array(model, img, tile=256, precision="bf16", device=ctx.device)  # warm-up
    hook.remove()
    assert seen and all(on and dtype == "torch.bfloat16" for on, dtype in seen), \
        f"bf16 autocast not in effect in the network (autocast on, conv output dtype): {sorted(set(seen))}"
    sync = torch.cuda.synchronize if ctx.cuda else (lambda: None)
    times = []
    for _ in range(reps):
        sync()
        t0 = time.perf_counter()
        upscale_array(model, img, tile=256, precision="bf16", device=ctx.device)
        sync()
        times.append(time.perf_counter() - t0)
    crop = img[:128, :128]
    gpu = upscale_array(model, crop, tile=256, precision="bf16", device=ctx.device)
    cpu = upscale_array(load_model(str(ckpt), "cpu"), crop, tile=256, precision="fp32", device="cpu")
    psnr = _psnr8(gpu, cpu)
    assert psnr >= 30, f"bf16 on {ctx.device} vs fp32 on the CPU: {psnr:.1f} dB"
    mp = size[0] * size[1] / 1e6
    return {"arch": arch, "input": list(size), "autocast_probe": sorted(set(seen)),
            "psnr_bf16_vs_cpu_fp32_db": None if math.isinf(psnr) else round(psnr, 2),
            "input_mp_per_s_median": round(mp / statistics.median(times), 4), "repeats": reps}


def sec_upscale_device_scope(ctx: Ctx) -> dict[str, Any]:
    """``upscale_array`` on ``cuda:1`` (``cuda:0`` with one GPU), in a process that has touched no
    GPU before: the rows equal the CPU's (a row read before its device-to-host copy ended would
    not), and no other GPU got a CUDA context or memory (the event and pinned buffers of the
    chosen device only)."""
    import numpy as np
    import torch

    from awm.data.synth import generate
    from awm.models.archs import build_model
    from awm.models.checkpoint import load_model, save_checkpoint
    from awm.upscale.infer import upscale_array

    torch.manual_seed(0)
    count = torch.cuda.device_count() if ctx.cuda else 0
    dev = "cpu" if not ctx.cuda else f"cuda:{1 if count > 1 else 0}"
    ckpt = save_checkpoint(ctx.work / "scope-model", build_model("compact-tiny", 2), "compact-tiny", {}, 2, 0)
    img = generate(9, 200, 160)
    cpu = upscale_array(load_model(str(ckpt), "cpu"), img, tile=48, tile_pad=8)
    got = upscale_array(load_model(str(ckpt), dev), img, tile=48, tile_pad=8, device=dev)
    gray = upscale_array(load_model(str(ckpt), dev), img[:, :, 0], tile=48, tile_pad=8, device=dev)
    psnr = _psnr8(got, cpu)
    assert psnr >= 40, f"{dev} vs CPU: {psnr:.1f} dB (rows read before their copy finished?)"
    assert gray.shape == cpu.shape[:2], gray.shape
    others: dict[str, Any] = {}
    for i in range(count):
        if f"cuda:{i}" != dev:
            ctx_open = bool(torch._C._cuda_hasPrimaryContext(i))
            others[f"cuda:{i}"] = {"context": ctx_open, "allocated": torch.cuda.memory_allocated(i) if ctx_open else 0}
    leaked = {k: v for k, v in others.items() if v["context"] or v["allocated"]}
    assert not leaked, f"work on {dev} touched other GPUs: {leaked}"
    return {"device": dev, "gpus": count, "psnr_vs_cpu_db": None if math.isinf(psnr) else round(psnr, 2),
            "other_gpus": others or "none (fewer than two GPUs: the no-other-context check needs two)",
            "max_abs": int(np.abs(got.astype(int) - cpu.astype(int)).max())}


def sec_onnx_cuda(ctx: Ctx) -> dict[str, Any]:
    """ONNX on CUDA never runs on the CPU: with onnxruntime's CUDA provider a session for ``cuda:N``
    runs on it with ``device_id`` N (an Identity model); without it, asking fails in one line naming
    onnxruntime-gpu."""
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None:
        return {"skipped": "onnxruntime or onnx not installed"}
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from awm.dist import NoGPUError
    from awm.models import onnx as ox

    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["output"])], "identity",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 4, 4])])
    path = ctx.work / "identity.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    available = ort.get_available_providers()
    dev = "cuda:0"
    if "CUDAExecutionProvider" not in available:
        try:
            ox.session(path, dev)
        except NoGPUError as e:
            assert "onnxruntime-gpu" in str(e) and "\n" not in str(e), str(e)
            return {"available": available, "refused": str(e)[:300]}
        raise AssertionError(f"a {dev} session was created with providers {available}")
    sess = ox.session(path, dev)
    used = sess.get_providers()
    assert used[0] in ox.GPU_PROVIDERS, used
    assert str(sess.get_provider_options()["CUDAExecutionProvider"]["device_id"]) == "0"
    return {"available": available, "session_providers": used}


def sec_multi_rank_sealed(ctx: Ctx) -> dict[str, Any]:
    """The 2-rank CPU torchrun integration test on this 1-GPU host (it must not reach set_device(1))."""
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                        "tests/integration/test_train_degrade_device.py"], cwd=REPO, capture_output=True, text=True,
                       timeout=280 * ctx.slow)
    tail = (p.stdout + p.stderr)[-1500:]
    assert p.returncode == 0, tail
    return {"pytest": tail.strip().splitlines()[-1]}


def sec_multi_rank_note(ctx: Ctx) -> dict[str, Any]:
    return {"skipped": "one GPU", "note": "one GPU: NCCL paths (DDP gradient all-reduce overlap, broadcast_buffers, the process-group "
                    "timeout of upscale/eval/score's final gather) are not exercised here; on a multi-GPU node run "
                    "`torchrun --nproc_per_node N -m awm train --config rrdb-6b-x4 steps=200 gan_start=100` and "
                    "`torchrun --nproc_per_node N -m awm upscale --model M --precision bf16 IN`"}


def _bench(ctx: Ctx, script: str, args: list[str], timeout: float) -> dict[str, Any]:
    p = subprocess.run([sys.executable, str(REPO / "tests" / "benchmarks" / script), *args], cwd=ctx.work,
                       capture_output=True, text=True, timeout=timeout * ctx.slow)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def sec_bench_train(ctx: Ctx) -> dict[str, Any]:
    args = ["--lr-patch", "8", "--batches", "2", "--steps", "2", "--warmup", "1", "--repeats", "1",
            "--cases", "compact-x2"] if ctx.dry else ["--batches", "16", "--steps", "30", "--repeats", "2"]
    return _bench(ctx, "bench_train.py", args, 200)


def sec_bench_degrade(ctx: Ctx) -> dict[str, Any]:
    args = ["--images", "2", "--size", "256x256", "--patch", "64", "--batch", "4", "--seconds", "0.5",
            "--repeats", "1", "--presets", "seed"] if ctx.dry else ["--seconds", "2", "--repeats", "2"]
    return _bench(ctx, "bench_degrade.py", args, 120)


@dataclass
class Section:
    name: str
    fn: Callable[[Ctx], dict[str, Any]]
    limit: float  # seconds on an H100/H200 (the child is killed after it); not measured yet
    call: int  # which call of the two-call recipe (RECIPE) runs it
    cuda_only: bool = False  # skipped by --cpu-dry-run
    timed: bool = False  # its figures are timings: runs after the checks, alone on the GPU
    data: bool = False  # reads the generated shards (made once, before any section starts)


SECTIONS = [
    Section("env", sec_env, 60, 1),
    Section("fused_adamw_found_inf", sec_fused_adamw_found_inf, 60, 1),
    Section("prefetcher_stress", sec_prefetcher_stress, 90, 1),
    Section("sync_steady_steps", sec_sync_steady_steps, 150, 1, data=True),
    Section("train_e2e", sec_train_e2e, 180, 1, data=True),
    Section("train_bf16", sec_train_bf16, 180, 1, cuda_only=True, data=True),
    Section("train_fp16_gan_clip", sec_train_fp16_gan_clip, 180, 1, data=True),
    Section("train_deterministic_hat_gan", sec_train_deterministic_hat_gan, 240, 1, data=True),
    Section("train_artifact_losses", sec_train_artifact_losses, 200, 1, data=True),
    Section("device_cuda", sec_device_cuda, 180, 1, data=True),
    Section("stop_latency", sec_stop_latency, 150, 1, data=True),
    Section("deepspeed_bf16", sec_deepspeed_bf16, 240, 1, data=True),
    Section("upscale_device_scope", sec_upscale_device_scope, 90, 1),
    Section("onnx_cuda", sec_onnx_cuda, 60, 1),
    Section("multi_rank_sealed", sec_multi_rank_sealed, 300, 1, cuda_only=True),
    Section("multi_rank_note", sec_multi_rank_note, 0, 1),
    Section("degrade_cuda_vs_cpu", sec_degrade_cuda_vs_cpu, 120, 1, timed=True),
    Section("upscale_bf16", sec_upscale_bf16, 150, 1, timed=True),
    Section("train_compile_default", sec_train_compile_default, 240, 2, cuda_only=True, data=True),
    Section("train_compile_reduce_overhead_gan_accum2", sec_train_compile_reduce_overhead_gan_accum2, 240, 2,
            cuda_only=True, data=True),
    Section("resume_compile_toggle", sec_resume_compile_toggle, 240, 2, cuda_only=True, data=True),
    Section("bench_degrade", sec_bench_degrade, 120, 2, timed=True),
    Section("bench_train", sec_bench_train, 200, 2, timed=True),
]

# Two device calls that fit the lent machine: <= 600 s a call, 15 min in all including the cold
# start (a minute or two). --budget stops new sections and cuts a running one at its end, so each
# call ends by its budget plus the wheels' install; timeout_s leaves a minute over that.
RECIPE = {
    1: {"budget_s": 330, "timeout_s": 400, "jobs": 4,
        "why": "correctness checks 4 at a time, then the timed degradation and upscale alone"},
    2: {"budget_s": 240, "timeout_s": 300, "jobs": 3,
        "why": "the three compile sections (cold compiles) together, then the training/degradation benchmarks alone"},
}


def recipe() -> dict[str, Any]:
    """The two-call recipe as data: per call its sections, budget, jobs and the device tool's timeout_s."""
    return {f"call{n}": {**spec, "sections": [s.name for s in SECTIONS if s.call == n],
                         "command": f"PYTHONUNBUFFERED=1 tests/gpu/run.sh --call {n} --out $OUT/gpu_checks.jsonl"}
            for n, spec in RECIPE.items()}


# -- driver -----------------------------------------------------------------------------------------

def child(name: str, ctx: Ctx, result: Path) -> int:
    """Run one section in this process; its outcome goes to ``result`` as JSON."""
    sec = next(s for s in SECTIONS if s.name == name)
    t0 = time.perf_counter()
    try:
        figures = sec.fn(ctx)
        out = {"status": "skipped" if "skipped" in figures else "pass", "figures": figures}
    except Exception as e:  # noqa: BLE001 - a failed check is a result: recorded with its traceback's tail
        out = {"status": "fail", "error": f"{type(e).__name__}: {e}"[-3000:],
               "traceback": traceback.format_exc()[-2000:]}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    result.write_text(json.dumps(out, default=str))
    return 0


def run_section(sec: Section, ctx: Ctx, deadline: float, scale: float) -> dict[str, Any]:
    """The section in a child process under its time limit (x ``scale``, cut at the deadline), or a 'not run' record."""
    if ctx.dry and sec.cuda_only:
        return {"status": "skipped", "why": "needs CUDA (cpu dry run)"}
    if sec.limit == 0:  # a record, no work: no process of its own
        return {"status": "skipped", "figures": sec.fn(ctx)}
    left = deadline - time.monotonic()
    if left < 5:
        return {"status": "not run", "why": "the run's --budget was spent"}
    limit = min(sec.limit * scale * ctx.slow, left)
    result = ctx.work / f"result-{sec.name}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", sec.name, "--work", str(ctx.work),
           "--result", str(result)] + (["--cpu-dry-run"] if ctx.dry else [])
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=limit,
                           env={**os.environ, "PYTHONUNBUFFERED": "1"})
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"")[-1500:] if isinstance(e.stdout, bytes) else (e.stdout or "")[-1500:]
        return {"status": "timeout", "limit_s": round(limit), "output_tail": str(out)}
    if not result.exists():
        return {"status": "fail", "error": f"child exited {p.returncode} without a result",
                "output_tail": (p.stdout + p.stderr)[-2000:], "seconds": round(time.perf_counter() - t0, 1)}
    return json.loads(result.read_text())


class Lines:
    """JSON lines appended to ``path`` (flushed and synced at once) and echoed on stdout: a run
    killed by the device's time limit keeps every line it wrote."""

    def __init__(self, path: Path):
        self.path, self.lock = path, threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        text = json.dumps(record, default=str)
        with self.lock:
            with self.path.open("a") as f:
                f.write(text + "\n")
                f.flush()
                os.fsync(f.fileno())
            print(text, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "runs" / "gpu_checks.jsonl"),
                    help="JSON lines file, appended to: the recipe, one line per section as it ends, a summary")
    ap.add_argument("--call", type=int, choices=sorted(RECIPE), help="run call N of the two-call recipe "
                    "(its sections, budget and jobs; --sections/--budget/--jobs given too win)")
    ap.add_argument("--sections", default="", help="comma-separated subset (default: all, or the call's)")
    ap.add_argument("--skip", default="", help="comma-separated sections to leave out")
    ap.add_argument("--jobs", type=int, help="check sections run at once (timed ones run alone); default 4")
    ap.add_argument("--budget", type=float, help="seconds after which no section starts and a running one is "
                    "stopped; default 600, or the call's")
    ap.add_argument("--limit-scale", type=float, default=1.0, help="multiply every section's time limit")
    ap.add_argument("--work", default="", help="work folder (default: a temporary one)")
    ap.add_argument("--cpu-dry-run", action="store_true",
                    help="no GPU: run the driver and the CPU-capable sections with tiny sizes")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    ap.add_argument("--result", default="", help=argparse.SUPPRESS)
    a = ap.parse_args()
    start = time.monotonic()
    try:
        import torch
    except ImportError as e:
        print(f"this Python ({sys.executable}) has no usable torch ({e}): run with one that has a CUDA build "
              "(PYTHON=... tests/gpu/run.sh)")
        return 2

    cuda = torch.cuda.is_available() and not a.cpu_dry_run
    if a.child:
        return child(a.child, Ctx(Path(a.work), cuda, a.cpu_dry_run), Path(a.result))
    if not cuda and not a.cpu_dry_run:
        print(f"no CUDA GPU found (torch {torch.__version__}, CUDA build {torch.version.cuda}, "
              f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): nothing checked. "
              "Run this on a machine with an NVIDIA GPU, or pass --cpu-dry-run to test the script itself.")
        return 3
    call = RECIPE.get(a.call or 0, {})
    wanted = [s for s in a.sections.split(",") if s] or [s.name for s in SECTIONS if s.call == a.call]
    unknown = set(wanted) - {s.name for s in SECTIONS}
    if unknown:
        print(f"unknown sections {sorted(unknown)}; valid: {', '.join(s.name for s in SECTIONS)}")
        return 2
    budget = a.budget if a.budget is not None else call.get("budget_s", 600)
    jobs = a.jobs if a.jobs is not None else call.get("jobs", 4)
    skip = set(a.skip.split(","))
    chosen = [s for s in SECTIONS if (not wanted or s.name in wanted) and s.name not in skip]
    deadline = start + budget
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    lines = Lines(Path(a.out))
    lines.write({"run": {"mode": "cpu-dry-run" if a.cpu_dry_run else "cuda", "call": a.call, "budget_s": budget,
                         "jobs": jobs, "sections": [s.name for s in chosen], "started": time.strftime("%Y-%m-%dT%H:%M:%S")},
                 "recipe": recipe()})
    results: dict[str, dict[str, Any]] = {}

    def record(sec: Section, res: dict[str, Any]) -> None:
        results[sec.name] = res
        lines.write({"section": sec.name, "timed": sec.timed, **res})

    with tempfile.TemporaryDirectory(prefix="awm-gpu-") as tmp:
        ctx = Ctx(Path(a.work or tmp), cuda, a.cpu_dry_run)
        ctx.work.mkdir(parents=True, exist_ok=True)
        if any(s.data and not (ctx.dry and s.cuda_only) for s in chosen):
            make_data(ctx.work)
        checks = [s for s in chosen if not s.timed]
        with ThreadPoolExecutor(max(1, jobs)) as pool:
            running = {pool.submit(run_section, s, ctx, deadline, a.limit_scale): s for s in checks}
            for done in as_completed(running):
                record(running[done], done.result())
        for sec in (s for s in chosen if s.timed):  # alone on the GPU: nothing else runs now
            record(sec, run_section(sec, ctx, deadline, a.limit_scale))
    statuses = [r["status"] for r in results.values()]
    summary = {"mode": "cpu-dry-run" if a.cpu_dry_run else "cuda", "wall_s": round(time.monotonic() - start, 1),
               "passed": statuses.count("pass"), "failed": sum(s in ("fail", "timeout") for s in statuses),
               "skipped": statuses.count("skipped"), "not_run": statuses.count("not run"),
               "defects": {k: {s: results.get(s, {}).get("status", "not chosen") for s in v}
                           for k, v in DEFECTS.items()}}
    lines.write({"summary": summary})
    return 0 if summary["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

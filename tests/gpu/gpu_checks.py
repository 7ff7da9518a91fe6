"""Every CUDA path of AWM checked and measured on one GPU, in about 5 minutes (H100/H200).

Why: the CI machines have no GPU, so the CUDA-only behaviour (fused AdamW's device-side skip,
the side-stream prefetcher, the device degradation, sync-free steady steps, bf16/fp16/compile/
deterministic runs, nvJPEG-free JPEG, ``awm upscale`` on the GPU) is only ever exercised here.
Start it through ``tests/gpu/run.sh`` (it installs the carried wheels first); see
``tests/gpu/README.md``.

Each section runs in its own process with its own time limit (a crash, a hang or a CUDA error
in one does not stop the others) and records pass/fail/skipped, its seconds and its figures.
Correctness sections run ``--jobs`` at a time; the benchmarks run afterwards, alone on the GPU.
One JSON object is printed last and written to ``--out``. Exit status: 0 all ran sections
passed, 1 some failed, 3 no CUDA GPU (nothing run; ``--cpu-dry-run`` runs the driver's logic on
the CPU instead, with tiny sizes and the CUDA-only assertions skipped).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

# Which issue-21 defect (or Build item) each section exercises on a GPU.
DEFECTS = {
    "1 deepspeed+bf16": ["deepspeed_bf16"], "2 fp16+GAN clipping": ["train_fp16_gan_clip"],
    "3 deterministic on CUDA": ["train_deterministic_hat_gan"],
    "4 compile reduce-overhead": ["train_compile_reduce_overhead_gan_accum2", "train_compile_default"],
    "5 device JPEG": ["degrade_cuda_vs_cpu", "sync_steady_steps"], "6 silent CPU fallback": ["device_cuda"],
    "7 NCCL timeout": ["multi_rank_note"], "8 speed": ["bench_train", "bench_degrade", "upscale_bf16"],
    "9 resume across compile": ["resume_compile_toggle"], "10 stop latency": ["stop_latency"],
    "11 tests sealed from a GPU": ["multi_rank_sealed"],
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
    return out | {"samples_per_s": samples_per_s(p.stderr + p.stdout)}


def _variant(ctx: Ctx, name: str, *extra: str, steps: int = 30, gan: bool = True, timeout: float = 170,
             env: dict[str, str] | None = None) -> dict[str, Any]:
    n = 6 if ctx.dry else steps
    p = awm(ctx, train_args(ctx, name, n, n // 2 if gan else n, *extra), timeout, env)
    return run_stats(ctx, name) | {"samples_per_s": samples_per_s(p.stderr + p.stdout)}


def sec_train_bf16(ctx: Ctx) -> dict[str, Any]:
    return _variant(ctx, "bf16", *(["precision=bf16"] if ctx.cuda else []))


def sec_train_fp16_gan_clip(ctx: Ctx) -> dict[str, Any]:
    """fp16 (GradScaler) in the GAN stage with clipping: one unscale per optimizer per step."""
    return _variant(ctx, "fp16", *(["precision=fp16"] if ctx.cuda else []), "optim.grad_clip=1.0")


def sec_train_deterministic_hat_gan(ctx: Ctx) -> dict[str, Any]:
    """deterministic=true, GAN stage, a window-attention generator (HAT's AdaptiveAvgPool2d backward,
    the U-Net discriminator's interpolate backward, the device median): runs, twice the same."""
    runs = []
    for k in range(2):
        _variant(ctx, f"det{k}", "deterministic=true", "model.arch=hat-tiny", "model.hparams={}", "data.patch=32",
                 "data.degrade_on=device", steps=16)
        runs.append(ctx.work / "runs" / f"det{k}" / "checkpoints" / "last" / "model.safetensors")
    from safetensors.torch import load_file

    a, b = (load_file(str(w)) for w in runs)
    same = all(bool((a[k] == b[k]).all()) for k in a)
    assert same, "two deterministic runs differ"
    return {"bitwise_equal_runs": same}


def sec_train_compile_default(ctx: Ctx) -> dict[str, Any]:
    return _variant(ctx, "compile", "model.compile=default", steps=30, timeout=280)


def sec_train_compile_reduce_overhead_gan_accum2(ctx: Ctx) -> dict[str, Any]:
    """CUDA graphs (reduce-overhead) in the GAN stage with gradient accumulation."""
    return _variant(ctx, "cudagraphs", "model.compile=reduce-overhead", "optim.accum=2", steps=30, timeout=280)


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


def sec_stop_latency(ctx: Ctx) -> dict[str, Any]:
    """SIGTERM mid-run with log.every far away: the state is saved within a bounded wall time."""
    import signal

    args = train_args(ctx, "stop", 100000, 100000, "log.every=100000", device_degrade=False)
    proc = subprocess.Popen([sys.executable, "-m", "awm", *args], cwd=ctx.work, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    run_dir = ctx.work / "runs" / "stop"
    t0 = time.perf_counter()
    while not (run_dir / "config.yaml").exists() and time.perf_counter() - t0 < 120 and proc.poll() is None:
        time.sleep(0.5)
    time.sleep(10 if not ctx.dry else 3)
    sent = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    try:
        text, _ = proc.communicate(timeout=90 * ctx.slow)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("no exit within 90 s of SIGTERM") from None
    latency = time.perf_counter() - sent
    assert "preempted" in text or "stop requested" in text, text[-2000:]
    return {"exit": proc.returncode, "seconds_to_exit": round(latency, 1)}


def sec_deepspeed_bf16(ctx: Ctx) -> dict[str, Any]:
    """DeepSpeed ZeRO-2 with bf16 (L1 stage), one process, through accelerate launch."""
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        return {"skipped": "deepspeed not installed"}
    cfg = REPO / "launch" / "deepspeed-zero2.yaml"
    args = train_args(ctx, "ds", 6 if ctx.dry else 30, 1000000, device_degrade=False)[1:]
    mixed = [] if ctx.cuda else ["--mixed_precision", "no"]  # the yaml's bf16; DeepSpeed on a CPU: fp32
    p = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(cfg),
                        "--num_processes", "1", *mixed, "-m", "awm", "train", *args], cwd=REPO,
                       capture_output=True, text=True, timeout=240 * ctx.slow)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    return run_stats(ctx, "ds")


def sec_upscale_bf16(ctx: Ctx) -> dict[str, Any]:
    """``awm upscale`` of a 960x540 image x4 (rrdb-6b, random weights) in bf16 on the GPU against
    fp32 on the CPU (PSNR), and its input MP/s on a 1080p image."""
    import numpy as np
    import torch

    from awm.data.synth import generate
    from awm.imageio import decode_image, encode_image
    from awm.models.archs import build_model
    from awm.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    arch, size = ("compact-tiny", (96, 64)) if ctx.dry else ("rrdb-6b", (960, 540))
    ckpt = ctx.work / "up-model"
    save_checkpoint(ckpt, build_model(arch, 4), arch, {}, 4, 0)
    src = ctx.work / "up-in"
    src.mkdir(exist_ok=True)
    (src / "a.png").write_bytes(encode_image(generate(5, *size), "png"))
    res = {}
    for tag, dev, prec in (("gpu", ctx.device, "bf16" if ctx.cuda else "fp32"), ("cpu", "cpu", "fp32")):
        if tag == "cpu" and not ctx.dry:  # the CPU reference on a crop: rrdb x4 of 960x540 is minutes on a CPU
            (src / "a.png").write_bytes(encode_image(generate(5, *size)[:128, :128], "png"))
        awm(ctx, ["upscale", "--model", str(ckpt), "--precision", prec, "--device", dev, "--tile", "256",
                  "--out", str(ctx.work / f"up-{tag}"), str(src)], 240)
        res[tag] = decode_image((ctx.work / f"up-{tag}" / "a_x4.png").read_bytes())
        stats = json.loads((ctx.work / f"up-{tag}" / "upscale_stats.json").read_text())
        res[f"{tag}_mp_per_s"] = stats["input_mp_per_s"]
    if not ctx.dry:  # GPU bf16 on the same crop for the comparison
        awm(ctx, ["upscale", "--model", str(ckpt), "--precision", "bf16", "--device", ctx.device, "--tile", "256",
                  "--out", str(ctx.work / "up-gpu-crop"), str(src)], 120)
        res["gpu"] = decode_image((ctx.work / "up-gpu-crop" / "a_x4.png").read_bytes())
    mse = float(np.mean((res["gpu"].astype(float) - res["cpu"].astype(float)) ** 2))
    psnr = math.inf if mse == 0 else 10 * math.log10(255**2 / mse)
    assert psnr >= 30, f"bf16 GPU vs fp32 CPU: {psnr:.1f} dB"
    return {"arch": arch, "input": list(size), "psnr_gpu_vs_cpu_db": None if math.isinf(psnr) else round(psnr, 2),
            "gpu_input_mp_per_s": res["gpu_mp_per_s"], "cpu_input_mp_per_s_crop": res["cpu_mp_per_s"]}


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
            "--cases", "compact-x2"] if ctx.dry else ["--batches", "16,32", "--steps", "50", "--repeats", "3"]
    return _bench(ctx, "bench_train.py", args, 300)


def sec_bench_degrade(ctx: Ctx) -> dict[str, Any]:
    args = ["--images", "2", "--size", "256x256", "--patch", "64", "--batch", "4", "--seconds", "0.5",
            "--repeats", "1", "--presets", "seed"] if ctx.dry else ["--seconds", "3", "--repeats", "2"]
    return _bench(ctx, "bench_degrade.py", args, 200)


@dataclass
class Section:
    name: str
    fn: Callable[[Ctx], dict[str, Any]]
    limit: float  # seconds on an H100/H200 (the child is killed after it)
    cuda_only: bool = False  # skipped by --cpu-dry-run
    bench: bool = False  # runs after the checks, alone on the GPU
    data: bool = False  # reads the generated shards (made once, before any section starts)


SECTIONS = [
    Section("env", sec_env, 60),
    Section("fused_adamw_found_inf", sec_fused_adamw_found_inf, 60),
    Section("prefetcher_stress", sec_prefetcher_stress, 90),
    Section("degrade_cuda_vs_cpu", sec_degrade_cuda_vs_cpu, 120),
    Section("sync_steady_steps", sec_sync_steady_steps, 150, data=True),
    Section("train_e2e", sec_train_e2e, 180, data=True),
    Section("train_bf16", sec_train_bf16, 180, cuda_only=True, data=True),
    Section("train_fp16_gan_clip", sec_train_fp16_gan_clip, 180, cuda_only=True, data=True),
    Section("train_deterministic_hat_gan", sec_train_deterministic_hat_gan, 240, data=True),
    Section("train_compile_default", sec_train_compile_default, 300, cuda_only=True, data=True),
    Section("train_compile_reduce_overhead_gan_accum2", sec_train_compile_reduce_overhead_gan_accum2, 300,
            cuda_only=True, data=True),
    Section("resume_compile_toggle", sec_resume_compile_toggle, 300, cuda_only=True, data=True),
    Section("device_cuda", sec_device_cuda, 180, data=True),
    Section("stop_latency", sec_stop_latency, 200, cuda_only=True, data=True),
    Section("deepspeed_bf16", sec_deepspeed_bf16, 240, data=True),
    Section("upscale_bf16", sec_upscale_bf16, 240),
    Section("multi_rank_sealed", sec_multi_rank_sealed, 300, cuda_only=True),
    Section("multi_rank_note", sec_multi_rank_note, 0),
    Section("bench_train", sec_bench_train, 330, bench=True),
    Section("bench_degrade", sec_bench_degrade, 220, bench=True),
]


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
    """The section in a child process under its time limit (x ``scale``), or a 'not run' record."""
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "runs" / "gpu_checks.json"), help="where the JSON goes")
    ap.add_argument("--sections", default="", help="comma-separated subset (default: all)")
    ap.add_argument("--skip", default="", help="comma-separated sections to leave out")
    ap.add_argument("--jobs", type=int, default=4, help="check sections run at once (benchmarks run alone)")
    ap.add_argument("--budget", type=float, default=600, help="seconds after which no new section starts")
    ap.add_argument("--limit-scale", type=float, default=1.0, help="multiply every section's time limit")
    ap.add_argument("--work", default="", help="work folder (default: a temporary one)")
    ap.add_argument("--cpu-dry-run", action="store_true",
                    help="no GPU: run the driver and the CPU-capable sections with tiny sizes")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    ap.add_argument("--result", default="", help=argparse.SUPPRESS)
    a = ap.parse_args()
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
    wanted = [s for s in a.sections.split(",") if s]
    unknown = set(wanted) - {s.name for s in SECTIONS}
    if unknown:
        print(f"unknown sections {sorted(unknown)}; valid: {', '.join(s.name for s in SECTIONS)}")
        return 2
    skip = set(a.skip.split(","))
    chosen = [s for s in SECTIONS if (not wanted or s.name in wanted) and s.name not in skip]
    t0, deadline = time.perf_counter(), time.monotonic() + a.budget
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    with tempfile.TemporaryDirectory(prefix="awm-gpu-") as tmp:
        ctx = Ctx(Path(a.work or tmp), cuda, a.cpu_dry_run)
        ctx.work.mkdir(parents=True, exist_ok=True)
        if any(s.data and not (ctx.dry and s.cuda_only) for s in chosen):
            make_data(ctx.work)
        results: dict[str, dict[str, Any]] = {}
        checks = [s for s in chosen if not s.bench]
        with ThreadPoolExecutor(max(1, a.jobs)) as pool:
            for sec, res in zip(checks, pool.map(lambda s: run_section(s, ctx, deadline, a.limit_scale), checks),
                                strict=True):
                results[sec.name] = res
                print(f"{sec.name:45s} {res['status']:8s} {res.get('seconds', '')}", file=sys.stderr, flush=True)
        for sec in (s for s in chosen if s.bench):
            results[sec.name] = run_section(sec, ctx, deadline, a.limit_scale)
            print(f"{sec.name:45s} {results[sec.name]['status']:8s} {results[sec.name].get('seconds', '')}",
                  file=sys.stderr, flush=True)
    statuses = [r["status"] for r in results.values()]
    report = {"gpu_checks": 1, "mode": "cpu-dry-run" if a.cpu_dry_run else "cuda",
              "wall_s": round(time.perf_counter() - t0, 1),
              "passed": statuses.count("pass"), "failed": sum(s in ("fail", "timeout") for s in statuses),
              "skipped": statuses.count("skipped"), "not_run": statuses.count("not run"),
              "defects": {k: {s: results.get(s, {}).get("status", "not chosen") for s in v} for k, v in DEFECTS.items()},
              "sections": results}
    text = json.dumps(report, default=str)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(text)
    print(text)
    return 0 if report["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

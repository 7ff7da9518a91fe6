"""Training step speed: `awm train`'s step vs an equally optimised bare PyTorch loop, side by side.

Both run the same model, memory format (awm's per-architecture choice), `cudnn.benchmark`,
precision, fused AdamW, EMA (multi-tensor) and loss modules, on the same uint8 batch held in
memory (converted to float on the device every step by both; augmentation off). The awm side is
`awm.train.trainer.Trainer.train_step` itself (accumulate context, device-side non-finite skip,
device-side loss sums, schedule); the bare side is the plainest fast loop. Cases: rrdb-6b x4
L1 stage, rrdb-6b x4 GAN stage (U-Net SN discriminator, VGG19 + ResNet50 perceptual backbones
randomly initialised: speed does not depend on the weights), compact x2, span x4; each at every
batch size. Repeats alternate awm/bare; overhead is the median of the paired ratios (robust to
load drifting on a shared machine), reported with their range (min..max) and each side's step-time
range: an overhead inside that range is noise, not a measurement. TFLOP/s and MFU use FLOPs per pair counted by awm.train.perf.

    .venv/bin/python tests/benchmarks/bench_train.py                      # GPU: LR 64 px, batch 16 and 32
    .venv/bin/python tests/benchmarks/bench_train.py --lr-patch 8 --batches 4 --cases compact-x2,span-x4   # a CPU
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

# One thread unless told otherwise: on a shared CPU, OpenMP threads spinning at barriers while a
# sibling is descheduled made steps ~50x slower (measured: 32 s vs 0.4 s, rrdb-6b LR 8 px).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
import torchvision  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pairs import make_pair_shards  # noqa: E402

from awm.models import losses  # noqa: E402
from awm.models.archs import build_model  # noqa: E402
from awm.train.components import build_components, make_optimizer  # noqa: E402
from awm.train.config import load_config  # noqa: E402
from awm.train.perf import peak_tflops  # noqa: E402
from awm.train.trainer import Trainer  # noqa: E402

CASES = {  # name: (arch, scale, GAN stage)
    "rrdb-6b-x4-l1": ("rrdb-6b", 4, False), "rrdb-6b-x4-gan": ("rrdb-6b", 4, True),
    "compact-x2": ("compact", 2, False), "span-x4": ("span", 4, False),
}


def random_backbones(folder: Path) -> list[str]:
    """Randomly initialised VGG19 and ResNet50-body weight files, and the overrides that use them."""
    vgg, anime = folder / "vgg19-random.pth", folder / "resnet50-random.pth"
    torch.save(torchvision.models.vgg19(weights=None).state_dict(), vgg)
    r = torchvision.models.resnet50(weights=None)
    torch.save(nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool, r.layer1, r.layer2, r.layer3, r.layer4).state_dict(),
               anime)
    return [f"loss.perceptual.vgg_path={vgg}", f"loss.perceptual.anime_path={anime}"]


def awm_side(case: str, batch: int, a: argparse.Namespace, data: Path, extra: list[str]) -> tuple[Trainer, dict]:
    """A Trainer on this case whose batches are one in-memory batch."""
    arch, scale, gan = CASES[case]
    cfg = load_config("rrdb-6b-x4", [
        f"runs={data / 'runs'}", f"name={case}-{batch}", f"model.arch={arch}", f"data.scale={scale}",
        f"data.patch={a.lr_patch * scale}", f"data.batch_size={batch}", "data.workers=0", "data.augment=false",
        f"data.train={data / 'train'}", f"data.eval={data / 'train'}", f"precision={a.precision}",
        f"model.compile={a.compile}", "steps=1000000", f"gan_start={0 if gan else 1000000}",
        "checkpoint.resume=false", *extra])
    precision = "no" if cfg.precision == "fp32" else cfg.precision
    trainer = Trainer(cfg, build_components(cfg, precision), threading.Event(), precision)
    trainer.close()
    dev = trainer.device
    q = a.lr_patch
    g = torch.Generator().manual_seed(0)
    fixed = {"lr": torch.randint(0, 256, (batch, q, q, 3), dtype=torch.uint8, generator=g).to(dev),
             "hr": torch.randint(0, 256, (batch, q * scale, q * scale, 3), dtype=torch.uint8, generator=g).to(dev),
             "aug": torch.zeros(batch, dtype=torch.int64), "worker": 0, "skipped": {}}
    trainer.batches = itertools.repeat(fixed)
    return trainer, fixed


class Bare:
    """The plainest fast loop doing the same arithmetic as the trainer's step."""

    def __init__(self, trainer: Trainer, fixed: dict, gan: bool):
        cfg, c = trainer.cfg, trainer.c
        self.dev, self.gan, self.fixed = trainer.device, gan, fixed
        self.fmt = torch.channels_last if c.channels_last else torch.contiguous_format
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(trainer.precision)
        torch.manual_seed(0)
        self.g = build_model(cfg.model.arch, cfg.data.scale, **cfg.model.hparams).to(self.dev, memory_format=self.fmt)
        self.g_params = [p for p in self.g.parameters() if p.requires_grad]
        self.g_opt = make_optimizer(self.g_params, cfg.optim.lr_g, tuple(cfg.optim.betas), 0.0, self.dev, False)
        self.ema = copy.deepcopy(self.g).float().requires_grad_(False)
        self.ema_params, self.decay = list(self.ema.parameters()), cfg.ema.decay
        self.all_params = list(self.g.parameters())  # EMA averages frozen ones too (SPAN's eval_conv)
        self.clip = cfg.optim.grad_clip
        if gan:
            self.d = losses.build_discriminator(cfg.model.discriminator).to(self.dev, memory_format=self.fmt)
            self.d_opt = make_optimizer(list(self.d.parameters()), cfg.optim.lr_d, tuple(cfg.optim.betas), 0.0,
                                        self.dev, False)
            self.g_loss = losses.build_generator_loss(cfg.loss).to(self.dev)
            self.d_loss = losses.build_discriminator_loss(cfg.loss).to(self.dev)

    def _float(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2).float().div_(255).contiguous(memory_format=self.fmt)

    def step(self) -> None:
        x, y = self._float(self.fixed["lr"]), self._float(self.fixed["hr"])
        with torch.autocast(self.dev.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
            sr = self.g(x)
            loss = sum(self.g_loss(sr, y, self.d(sr)).values()) if self.gan else (sr.float() - y).abs().mean()
        loss.backward(inputs=self.g_params)
        if self.gan:
            with torch.autocast(self.dev.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
                d_loss = sum(self.d_loss(self.d(torch.cat([y, sr.detach()]))).values())
            d_loss.backward()
        for opt in [self.g_opt] + ([self.d_opt] if self.gan else []):
            if self.clip:
                torch.nn.utils.clip_grad_norm_([p for group in opt.param_groups for p in group["params"]], self.clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
        torch._foreach_lerp_(self.ema_params, self.all_params, 1 - self.decay)


def seconds_per_step(step, steps: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) / steps


def figures(sec: float, batch: int, flops: int, peak: float | None) -> dict:
    tflops = batch / sec * flops / 1e12
    return {"pairs_per_s": round(batch / sec, 2), "step_ms": round(sec * 1e3, 2), "tflops": round(tflops, 4),
            "mfu": round(tflops / peak, 4) if peak else None}


def run_case(case: str, batch: int, a: argparse.Namespace, data: Path, extra: list[str]) -> dict:
    from accelerate.state import AcceleratorState, GradientState

    gan = CASES[case][2]
    trainer, fixed = awm_side(case, batch, a, data, extra if gan else [])
    bare = Bare(trainer, fixed, gan)
    flops, peak = trainer.flops[gan], peak_tflops(trainer.device, trainer.precision, a.peak_tflops)
    for step in (trainer.train_step, bare.step):
        seconds_per_step(step, a.warmup, trainer.device)
    awm_s, bare_s = [], []
    for _ in range(a.repeats):
        awm_s.append(seconds_per_step(trainer.train_step, a.steps, trainer.device))
        bare_s.append(seconds_per_step(bare.step, a.steps, trainer.device))
    print(f"{case} batch {batch}: awm {[round(s * 1e3, 1) for s in awm_s]} ms, bare "
          f"{[round(s * 1e3, 1) for s in bare_s]} ms", file=sys.stderr)
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    ratios = [t / b for t, b in zip(awm_s, bare_s, strict=True)]
    return {"case": case, "batch": batch, "lr_patch": a.lr_patch, "flops_per_pair": flops,
            "awm": figures(statistics.median(awm_s), batch, flops, peak) | spread(awm_s),
            "bare": figures(statistics.median(bare_s), batch, flops, peak) | spread(bare_s),
            "overhead_pct": round(100 * (statistics.median(ratios) - 1), 1),
            "overhead_pct_range": [round(100 * (min(ratios) - 1), 1), round(100 * (max(ratios) - 1), 1)]}


def spread(seconds: list[float]) -> dict:
    """Min and max step time over the repeats: how much of an overhead is noise."""
    return {"step_ms_range": [round(min(seconds) * 1e3, 2), round(max(seconds) * 1e3, 2)]}


def main() -> int:
    cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--batches", default="16,32")
    ap.add_argument("--lr-patch", type=int, default=64, help="LR patch side (HR = LR x scale)")
    ap.add_argument("--precision", default="bf16" if cuda else "fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--compile", default="none")
    ap.add_argument("--steps", type=int, default=50, help="timed steps per repeat (>= 50 for a figure to quote)")
    ap.add_argument("--warmup", type=int, default=10 if cuda else 3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (GPUs: from awm.train.perf)")
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        make_pair_shards(data / "train", [2], scales=(2, 4), size=(128, 128))
        extra = random_backbones(data)
        for case, batch in itertools.product(a.cases.split(","), [int(b) for b in a.batches.split(",")]):
            results.append(run_case(case, batch, a, data, extra))
    device = torch.cuda.get_device_name() if cuda else "cpu"
    print(json.dumps({"benchmark": "train_step", "device": device, "threads": torch.get_num_threads(),
                      "precision": a.precision, "compile": a.compile, "steps": a.steps, "repeats": a.repeats,
                      "results": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

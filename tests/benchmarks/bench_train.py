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

``--peers basicsr,neosr`` adds the real peers on compact-x2 (the one architecture all three ship
the same: SRVGGNetCompact 64x16, PReLU), each in its own venv made from the package index with
this process's torch version (tests/benchmarks/peers.py; a peer that cannot be installed or
run is skipped with the reason). Same work on every side: L1 only, batch ``--peer-batch``, the same
LR patch, fp32 on the CPU, the same threads, AdamW (lr 2e-4, betas 0.9/0.99, no weight decay, no
clipping), EMA on (decay 0.999), no augmentation, LR patch ``--peer-lr-patch``, ``--workers`` loader workers, the same 128x128
images read in each one's native format: awm's pair shards through ``awm.train.Trainer``'s own
loader (its default reuse: each decode cut into 8 patches over 8 batches), BasicSR 1.4.2's
PairedImageDataset and neosr 0.1.0's paired dataset from folders of LR/HR PNGs, driven through
their own dataset/dataloader/model API (tests/benchmarks/peer_train.py). The bare loop on one
in-memory batch is the compute floor. Figures: CPU time of the process tree per pair and pairs/s
over ``--peer-steps`` steps after warm-up, rounds interleaved (awm, bare, BasicSR, neosr), medians
and ranges; peer/awm ratios per round.

    .venv/bin/python tests/benchmarks/bench_train.py                      # GPU: LR 64 px, batch 16 and 32
    .venv/bin/python tests/benchmarks/bench_train.py --lr-patch 8 --batches 4 --cases compact-x2,span-x4   # a CPU
    .venv/bin/python tests/benchmarks/bench_train.py --lr-patch 8 --cases none --peers basicsr,neosr --peer-lr-patch 16
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# One thread unless told otherwise: on a shared CPU, OpenMP threads spinning at barriers while a
# sibling is descheduled made steps ~50x slower (measured: 32 s vs 0.4 s, rrdb-6b LR 8 px).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pairs import make_pair_shards  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer_train import tree_cpu_s  # noqa: E402
from peers import PeerUnavailable, peer_venv  # noqa: E402

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
    trainer = Trainer(cfg, build_components(cfg, precision, None), threading.Event(), precision, None)
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


PEERS = {  # name: (label, venv, pip installs after torch; see peers.peer_venv)
    "basicsr": ("BasicSR 1.4.2", "basicsr-1.4.2", [["basicsr-fixed==1.4.2"]]),  # 1.4.2 that imports with new torchvision
    # neosr 0.1.0 and its newest scipy/PyWavelets declare Python >= 3.12; neosr's own code runs on
    # 3.11 (the version here): its dependencies as it pins them for this Python, then neosr alone.
    "neosr": ("neosr 0.1.0", "neosr-0.1.0", [
        ["einops>=0.6.1,<0.7", "lmdb>=1.5.1,<2", "numpy>=1.25.2,<2", "opencv-python-headless>=4.8.1.78,<5",
         "pywavelets>=1.5,<2", "scipy>=1.11.1,<2", "tb-nightly>=2.18.0a20240708,<3", "tqdm>=4.65,<5"],
        ["--no-deps", "--ignore-requires-python", "neosr==0.1.0"]]),
}
PEER_CASE = "compact-x2"


def peer_images(folder: Path, n: int) -> tuple[Path, Path, Path]:
    """``n`` 128x128 pairs as awm pair shards and the same pixels as BasicSR/neosr LR and HR PNG folders."""
    import tarfile

    shards = make_pair_shards(folder / "shards", [n], scales=(2,), size=(128, 128), seed=1)
    hr, lr = folder / "hr", folder / "lr"
    hr.mkdir()
    lr.mkdir()
    with tarfile.open(shards / "train-000000.tar") as t:
        for m in t.getmembers():
            key, ext = m.name.split(".", 1)
            if ext in ("hr.png", "lr_x2.jpg"):
                img = cv2.imdecode(np.frombuffer(t.extractfile(m).read(), np.uint8), cv2.IMREAD_COLOR)
                cv2.imwrite(str((hr if ext == "hr.png" else lr) / f"{key}.png"), img)
    return shards, hr, lr


def peer_python(name: str) -> Path:
    """The interpreter of a peer's venv, with this process's torch (PeerUnavailable with the reason)."""
    _, venv, installs = PEERS[name]
    pins = [f"torch=={torch.__version__.split('+')[0]}", f"torchvision=={torchvision.__version__.split('+')[0]}"]
    return peer_venv(venv, [pins + installs[0], *installs[1:]]) / "python"


def run_peer(python: Path, name: str, spec: dict) -> dict:
    """One timed window of a peer in its venv: its JSON, or ``{"skipped": reason}`` when it fails."""
    p = subprocess.run([str(python), str(Path(__file__).resolve().parent / "peer_train.py"), "--peer", name,
                        "--spec", json.dumps(spec)], capture_output=True, text=True)
    if p.returncode:
        lines = [x for x in p.stderr.strip().splitlines() if x.strip()] or [f"exit status {p.returncode}"]
        return {"skipped": f"{PEERS[name][0]} failed: {lines[-1].strip()[:300]}"}
    return json.loads(p.stdout.strip().splitlines()[-1])


def window(step, warmup: int, steps: int) -> dict[str, float]:
    """CPU seconds of this process tree (loader workers included) and wall seconds over ``steps``."""
    for _ in range(warmup):
        step()
    cpu0, t0 = tree_cpu_s(), time.perf_counter()
    for _ in range(steps):
        step()
    return {"cpu_s": tree_cpu_s() - cpu0, "wall_s": time.perf_counter() - t0}


def summarise(runs: list[dict[str, float]], pairs: int) -> dict:
    cpu = [1e3 * r["cpu_s"] / pairs for r in runs]
    rate = [pairs / r["wall_s"] for r in runs]
    return {"cpu_ms_per_pair": round(statistics.median(cpu), 2), "cpu_ms_per_pair_range": [round(min(cpu), 2),
            round(max(cpu), 2)], "pairs_per_s": round(statistics.median(rate), 2),
            "pairs_per_s_range": [round(min(rate), 2), round(max(rate), 2)]}


def peer_comparison(a: argparse.Namespace, data: Path) -> dict:
    """awm (its Trainer and loader), the bare loop and the peers on compact-x2, rounds interleaved."""
    from accelerate.state import AcceleratorState, GradientState

    arch, scale, _ = CASES[PEER_CASE]
    shards, hr, lr = peer_images(data / "peers", a.peer_images)
    threads = torch.get_num_threads()
    cfg = load_config("rrdb-6b-x4", [
        f"runs={data / 'runs'}", "name=peers", f"model.arch={arch}", f"data.scale={scale}",
        f"data.patch={a.peer_lr_patch * scale}", f"data.batch_size={a.peer_batch}", f"data.workers={a.workers}",
        "data.augment=false", f"data.train={shards}", f"data.eval={shards}", "precision=fp32", "model.compile=none",
        "steps=1000000", "gan_start=1000000", "checkpoint.resume=false", "ema.enabled=true"])
    assert cfg.optim.grad_clip == 0 and cfg.optim.weight_decay == 0 and cfg.ema.enabled, "peer settings assume these"
    trainer = Trainer(cfg, build_components(cfg, "no", None), threading.Event(), "no", None)
    g_net = trainer.c.generator_plain  # the peers build the same SRVGGNetCompact from these
    spec = {"hr": str(hr), "lr": str(lr), "scale": scale, "lr_patch": a.peer_lr_patch, "batch": a.peer_batch,
            "workers": a.workers, "num_feat": g_net.num_feat, "num_conv": g_net.num_conv, "lr_g": cfg.optim.lr_g,
            "betas": list(cfg.optim.betas), "ema": cfg.ema.decay, "warmup": a.warmup, "steps": a.peer_steps,
            "threads": threads}
    g = torch.Generator().manual_seed(0)
    q = a.peer_lr_patch
    fixed = {"lr": torch.randint(0, 256, (a.peer_batch, q, q, 3), dtype=torch.uint8, generator=g),
             "hr": torch.randint(0, 256, (a.peer_batch, q * scale, q * scale, 3), dtype=torch.uint8, generator=g)}
    bare = Bare(trainer, fixed, False)
    pythons, skipped = {}, {}
    for name in a.peers:
        try:
            pythons[name] = peer_python(name)
        except PeerUnavailable as e:
            skipped[name] = str(e)
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in ("awm", "bare", *pythons)}
    versions = {}
    try:
        for r in range(a.peer_rounds):
            runs["awm"].append(window(trainer.train_step, a.warmup if r == 0 else 1, a.peer_steps))
            runs["bare"].append(window(bare.step, a.warmup if r == 0 else 1, a.peer_steps))
            for name, python in pythons.items():
                if name in skipped:
                    continue
                out = run_peer(python, name, spec)
                if "skipped" in out:
                    skipped[name] = out["skipped"]
                    continue
                versions[name] = out["version"]
                runs[name].append(out)
            print(f"peers round {r}: " + ", ".join(f"{k} {1e3 * v[-1]['cpu_s'] / (a.peer_steps * a.peer_batch):.1f} "
                                                     f"CPU-ms/pair" for k, v in runs.items() if v), file=sys.stderr)
    finally:
        trainer.close()
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    pairs = a.peer_steps * a.peer_batch
    sides = {k: summarise(v, pairs) for k, v in runs.items() if k not in skipped and v}
    for name in sides.keys() & PEERS.keys():
        ratio = [p["cpu_s"] / w["cpu_s"] for p, w in zip(runs[name], runs["awm"], strict=False)]
        sides[name] |= {"label": PEERS[name][0], "version": versions[name],
                        "cpu_vs_awm": round(statistics.median(ratio), 3),
                        "cpu_vs_awm_range": [round(min(ratio), 3), round(max(ratio), 3)]}
    return {"case": PEER_CASE, "lr_patch": a.peer_lr_patch, "batch": a.peer_batch, "workers": a.workers,
            "steps": a.peer_steps, "rounds": a.peer_rounds, "images": f"{a.peer_images} x 128x128",
            "ema": cfg.ema.enabled, "awm_patches_per_image": cfg.data.patches_per_image, "optimizer": "AdamW", "lr_g": cfg.optim.lr_g, "sides": sides,
            "skipped": {name: skipped[name] for name in a.peers if name in skipped},
            "labels": {name: PEERS[name][0] for name in a.peers}}


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
    ap.add_argument("--peers", default="", help="peer frameworks on compact-x2: basicsr,neosr (empty: none)")
    ap.add_argument("--peer-batch", type=int, default=8)
    ap.add_argument("--peer-lr-patch", type=int, default=None,
                    help="LR patch of the peer comparison (default --lr-patch; larger: less per-step overhead)")
    ap.add_argument("--peer-steps", type=int, default=20, help="timed steps per side and round")
    ap.add_argument("--peer-rounds", type=int, default=3)
    ap.add_argument("--peer-images", type=int, default=32)
    ap.add_argument("--workers", type=int, default=1, help="loader workers on every side of the peer comparison "
                                                           "(neosr's loader needs >= 1)")
    a = ap.parse_args()
    a.peers = [p for p in a.peers.split(",") if p]
    a.peer_lr_patch = a.peer_lr_patch or a.lr_patch
    unknown = set(a.peers) - PEERS.keys()
    if unknown:
        ap.error(f"--peers: unknown {sorted(unknown)}; valid: {', '.join(PEERS)}")
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        make_pair_shards(data / "train", [2], scales=(2, 4), size=(128, 128))
        extra = random_backbones(data)
        cases = [c for c in a.cases.split(",") if c != "none"]
        for case, batch in itertools.product(cases, [int(b) for b in a.batches.split(",")]):
            results.append(run_case(case, batch, a, data, extra))
        peers = peer_comparison(a, data) if a.peers else None
    device = torch.cuda.get_device_name() if cuda else "cpu"
    print(json.dumps({"benchmark": "train_step", "device": device, "threads": torch.get_num_threads(),
                      "precision": a.precision, "compile": a.compile, "steps": a.steps, "repeats": a.repeats,
                      "results": results} | ({"peers": peers} if peers else {})))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

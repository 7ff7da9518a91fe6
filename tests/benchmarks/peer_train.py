"""One timed training window of a peer framework (BasicSR, neosr), run by bench_train.py in the
peer's own venv: standalone, no awm import.

Each peer is driven through its own API the way its ``train.py`` drives it: options dict ->
``build_dataset`` (its paired dataset reading a folder of LR/HR PNGs) -> ``build_dataloader`` with
an enlarged sampler (one epoch covers the whole window, as its iteration-based training sets
``dataset_enlarge_ratio``) -> ``build_model`` -> per iteration ``update_learning_rate``,
``feed_data``, ``optimize_parameters``. neosr 0.1.0 assumes CUDA in two places (model device,
sampler generator): each is replaced by its CPU equivalent, nothing else of its step. Prints one
JSON line: CPU seconds of the process tree (main process and loader workers) and wall seconds
over ``--steps`` steps after ``--warmup``.

    python peer_train.py --peer basicsr --spec '{"hr": ..., "lr": ..., "scale": 2, ...}'
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_TICK = os.sysconf("SC_CLK_TCK")


def tree_cpu_s(pid: int | None = None) -> float:
    """User + system CPU seconds of a process and its live descendants (loader workers count:
    they are not reaped while the loader runs, so rusage of children would miss them)."""
    stats: dict[int, list[str]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stats[int(d.name)] = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
    children: dict[int, list[int]] = {}
    for p, f in stats.items():
        children.setdefault(int(f[1]), []).append(p)
    total, todo = 0.0, [os.getpid() if pid is None else pid]
    while todo:
        p = todo.pop()
        if p in stats:
            total += (int(stats[p][11]) + int(stats[p][12])) / _TICK
        todo += children.get(p, [])
    return total


def _steps(model, loader):
    """The peers' train.py iteration (logging, validation and checkpoints aside), one yield a step."""
    for it, data in enumerate(loader, 1):
        model.update_learning_rate(it, warmup_iter=-1)
        model.feed_data(data)
        model.optimize_parameters(it)
        yield


def _timed(it, warmup: int, steps: int) -> dict[str, float]:
    """Times steps warmup..warmup+steps of ``it`` (a generator yielding after each step)."""
    for _ in range(warmup):
        next(it)
    cpu0, t0 = tree_cpu_s(), time.perf_counter()
    for _ in range(steps):
        next(it)
    return {"cpu_s": tree_cpu_s() - cpu0, "wall_s": time.perf_counter() - t0}


def _enlarge(s: dict[str, Any]) -> int:
    """Dataset enlarge ratio so that one epoch holds every step of the window (no loader restart)."""
    return math.ceil((s["warmup"] + s["steps"] + 1) * s["batch"] / len(os.listdir(s["hr"])))


def basicsr(s: dict[str, Any]) -> dict[str, Any]:
    import basicsr as pkg
    from basicsr.data import build_dataloader, build_dataset
    from basicsr.data.data_sampler import EnlargedSampler
    from basicsr.models import build_model

    ds = {"name": "bench", "type": "PairedImageDataset", "dataroot_gt": s["hr"], "dataroot_lq": s["lr"],
          "io_backend": {"type": "disk"}, "filename_tmpl": "{}", "gt_size": s["lr_patch"] * s["scale"],
          "use_hflip": False, "use_rot": False, "phase": "train", "scale": s["scale"],
          "num_worker_per_gpu": s["workers"], "batch_size_per_gpu": s["batch"], "dataset_enlarge_ratio": _enlarge(s)}
    opt = {"name": "bench", "model_type": "SRModel", "scale": s["scale"], "num_gpu": 0, "dist": False,
           "rank": 0, "world_size": 1, "is_train": True,
           "network_g": {"type": "SRVGGNetCompact", "num_in_ch": 3, "num_out_ch": 3, "num_feat": s["num_feat"],
                         "num_conv": s["num_conv"], "upscale": s["scale"], "act_type": "prelu"},
           "path": {"pretrain_network_g": None, "strict_load_g": True, "resume_state": None},
           "train": {"ema_decay": s["ema"], "optim_g": {"type": "AdamW", "lr": s["lr_g"], "betas": s["betas"],
                                                         "weight_decay": 0.0},
                     "scheduler": {"type": "MultiStepLR", "milestones": [10 ** 9], "gamma": 0.5},
                     "total_iter": 10 ** 9, "warmup_iter": -1,
                     "pixel_opt": {"type": "L1Loss", "loss_weight": 1.0, "reduction": "mean"}},
           "datasets": {"train": ds}}
    dataset = build_dataset(ds)
    sampler = EnlargedSampler(dataset, 1, 0, ds["dataset_enlarge_ratio"])
    loader = build_dataloader(dataset, ds, num_gpu=0, dist=False, sampler=sampler, seed=0)
    model = build_model(opt)
    return {"version": pkg.__version__, **_timed(_steps(model, loader), s["warmup"], s["steps"])}


def neosr(s: dict[str, Any]) -> dict[str, Any]:
    from importlib.metadata import version

    import torch

    folder = Path(tempfile.mkdtemp(prefix="neosr_opt_"))
    toml = folder / "bench.toml"
    betas = ", ".join(str(b) for b in s["betas"])
    toml.write_text(f"""name = "bench"
model_type = "image"
scale = {s['scale']}
num_gpu = 0
[datasets.train]
type = "paired"
dataroot_gt = "{s['hr']}"
dataroot_lq = "{s['lr']}"
patch_size = {s['lr_patch']}
batch_size = {s['batch']}
num_worker_per_gpu = {s['workers']}
dataset_enlarge_ratio = {_enlarge(s)}
use_hflip = false
use_rot = false
[network_g]
type = "compact"
num_feat = {s['num_feat']}
num_conv = {s['num_conv']}
[path]
experiments_root = "{folder}"
[train]
ema = {s['ema']}
grad_clip = false
total_iter = 1000000000
[train.optim_g]
type = "adamw"
lr = {s['lr_g']}
betas = [{betas}]
weight_decay = 0.0
[train.scheduler]
type = "multisteplr"
milestones = [1000000000]
gamma = 0.5
[train.pixel_opt]
type = "L1Loss"
loss_weight = 1.0
[logger]
print_freq = 1000000000
""")
    sys.argv = ["neosr", "-opt", str(toml)]  # neosr's archs read their scale from the command line at import
    from neosr.data import build_dataloader, build_dataset
    from neosr.models import build_model
    from neosr.utils.options import parse_options

    opt, _ = parse_options(str(folder), is_train=True)
    # neosr 0.1.0's base model hard-codes device "cuda"; this CPU comparison sets it to the CPU
    # right after, before the networks are built and moved (nothing else of its step changes).
    base = sys.modules["neosr.models.base"].base
    init = base.__init__

    def cpu_init(self, o):
        init(self, o)
        self.device = torch.device("cpu")
    base.__init__ = cpu_init
    ds = opt["datasets"]["train"]
    dataset = build_dataset(ds)
    # neosr's EnlargedSampler draws its permutation with a CUDA generator; torch's RandomSampler over
    # the same enlarged length does the same index bookkeeping on the CPU.
    sampler = torch.utils.data.RandomSampler(dataset, num_samples=len(dataset) * ds["dataset_enlarge_ratio"])
    loader = build_dataloader(dataset, ds, num_gpu=0, dist=False, sampler=sampler, seed=0)
    model = build_model(opt)
    return {"version": version("neosr"), **_timed(_steps(model, loader), s["warmup"], s["steps"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peer", choices=["basicsr", "neosr"], required=True)
    ap.add_argument("--spec", required=True, help="JSON: hr, lr folders, scale, lr_patch, batch, workers, "
                                                  "num_feat, num_conv, lr_g, betas, ema, warmup, steps, threads")
    a = ap.parse_args()
    spec = json.loads(a.spec)
    import torch
    torch.set_num_threads(spec["threads"])
    out = {"basicsr": basicsr, "neosr": neosr}[a.peer](spec)
    print(json.dumps({**out, "torch": torch.__version__, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()

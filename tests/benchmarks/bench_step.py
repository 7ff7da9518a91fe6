"""Time per training step: `awm.train.train` vs a bare PyTorch loop, same model, batch, loss, precision.

The toolkit run reads pair shards through its loader (--workers), logs to TensorBoard, keeps the
full loop (accumulate/sync, NaN and stop flags, LR schedule); its step time comes from the wall
times of its TensorBoard events between step ``warmup`` and the last step (start-up and the final
validation excluded). The bare loop trains the same model on batches already in memory with
AdamW, the same loss, gradient clipping and autocast. Runs alternate; ``overhead_pct`` is the
median of the paired (same-repeat) ratios, robust to load drifting on a shared machine.
Run by hand: .venv/bin/python tests/benchmarks/bench_step.py [--device cuda --arch rrdb-6b ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pairs import make_pair_shards  # noqa: E402

from awm.models import build_model  # noqa: E402
from awm.train import load_config, train  # noqa: E402


def bare_loop(a: argparse.Namespace, steps: int) -> float:
    """Seconds per step of the plainest loop that does the same arithmetic."""
    dev = torch.device(a.device)
    torch.manual_seed(0)
    model = build_model(a.arch, a.scale, **json.loads(a.hparams)).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.99))
    q = a.patch // a.scale
    x = torch.rand(a.batch, 3, q, q, device=dev)
    y = torch.rand(a.batch, 3, a.patch, a.patch, device=dev)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(a.precision)
    t0 = 0.0
    for i in range(steps + a.warmup):
        if i == a.warmup:
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        with torch.autocast(dev.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = (model(x) - y).abs().mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def toolkit(a: argparse.Namespace, steps: int, data: Path, runs: Path, k: int) -> float:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    total = steps + a.warmup
    cfg = load_config("tiny-cpu", [
        f"name=bench{k}", f"runs={runs}", f"steps={total}", f"gan_start={total}", f"data.train={data}",
        f"data.eval={data}", f"data.scale={a.scale}", f"data.patch={a.patch}", f"data.batch_size={a.batch}",
        f"data.workers={a.workers}", f"model.arch={a.arch}", f"model.hparams={a.hparams}", f"precision={a.precision}",
        f"model.channels_last={str(a.device == 'cuda').lower()}", f"optim.grad_clip={a.clip}",
        "ema.enabled=false", "validation.every=0", "validation.max_images=1", "validation.crop=64",
        f"checkpoint.state_every={total + 1}", f"log.every={a.warmup}", "checkpoint.resume=false"])
    stats = train(cfg)
    assert stats["status"] == "done", stats
    ev = EventAccumulator(str(runs / f"bench{k}" / "tb"))
    ev.Reload()
    t = {e.step: e.wall_time for e in ev.Scalars("loss/pixel")}
    return (t[total] - t[a.warmup]) / steps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--arch", default="compact")
    ap.add_argument("--hparams", default='{"num_feat": 48, "num_conv": 12}')
    ap.add_argument("--scale", type=int, default=2)
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--workers", type=int, default=4 if torch.cuda.is_available() else 1, help="loader workers")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    with tempfile.TemporaryDirectory() as tmp:
        data = make_pair_shards(Path(tmp) / "data", [8, 8], scales=(a.scale,),
                                size=(max(256, 2 * a.patch), max(192, 2 * a.patch)))
        bare, tk = [], []
        for k in range(a.repeats):
            bare.append(bare_loop(a, a.steps))
            tk.append(toolkit(a, a.steps, data, Path(tmp) / "runs", k))
            print(f"repeat {k}: bare {bare[-1] * 1e3:.1f} ms/step, toolkit {tk[-1] * 1e3:.1f} ms/step",
                  file=sys.stderr)
    mb, mt = statistics.median(bare), statistics.median(tk)
    print(json.dumps({
        "benchmark": "train_step", "device": a.device, "arch": a.arch, "hparams": json.loads(a.hparams),
        "scale": a.scale, "hr_patch": a.patch, "batch": a.batch, "precision": a.precision, "steps": a.steps,
        "median_ms_per_step": {"bare_pytorch": round(mb * 1e3, 2), "awm_train": round(mt * 1e3, 2)},
        "runs_ms": {"bare_pytorch": [round(v * 1e3, 2) for v in bare], "awm_train": [round(v * 1e3, 2) for v in tk]},
        "overhead_pct_of_medians": round(100 * (mt / mb - 1), 1),
        "overhead_pct": round(100 * (statistics.median(t / b for t, b in zip(tk, bare, strict=True)) - 1), 1),
        "goal_overhead_pct": 5}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Training-step cost of every full-size architecture, relative to the seed's RRDB 6B, plus round trips.

Run by hand: ``python tests/benchmarks/bench_models.py --device cuda`` (or ``--device cpu --size 32
--batch 2`` for a quick look). For each arch: median ms of one bf16-autocast forward+backward+AdamW
step on a batch of LR patches, its ratio to rrdb-6b measured in the same run, parameters, and
the max abs difference after save -> load and after convert -> spandrel (must be 0).
Prints one JSON object last.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from spandrel import ModelLoader

from awm.models.archs import build_model, model_info
from awm.models.checkpoint import convert, load_model, save_checkpoint

ARCHS = ["rrdb-6b", "rrdb", "compact", "span", "swinir", "hat", "dat", "grl"]


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def step_ms(arch: str, scale: int, device: str, size: int, batch: int, steps: int) -> float:
    torch.manual_seed(0)
    model = build_model(arch, scale).to(device).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    lr = torch.rand(batch, 3, size, size, device=device)
    hr = torch.rand(batch, 3, size * scale, size * scale, device=device)
    times = []
    for i in range(steps + 2):
        _sync(device)
        t = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = (model(lr).float() - hr).abs().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(device)
        if i >= 2:  # two warm-up steps
            times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def round_trip(arch: str, scale: int, device: str, size: int, tmp: Path) -> dict[str, float]:
    torch.manual_seed(1)
    model = build_model(arch, scale).to(device).eval()
    x = torch.rand(1, 3, size, size, device=device)
    with torch.no_grad():
        ref = model(x)
        save_checkpoint(tmp / arch, model, arch, {}, scale, step=0)
        ours = load_model(tmp / arch, device=device).module(x)
        convert(tmp / arch, tmp / f"{arch}.pth")
        theirs = ModelLoader(device).load_from_file(tmp / f"{arch}.pth").model.eval()(x)
    return {"ours": float((ours - ref).abs().max()), "spandrel": float((theirs - ref).abs().max())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--scale", type=int, default=2)
    ap.add_argument("--size", type=int, default=64, help="LR patch side")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--archs", default=",".join(ARCHS))
    args = ap.parse_args()
    archs = args.archs.split(",")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arch in archs:
            info = model_info(arch, args.scale)
            ms = step_ms(arch, args.scale, args.device, args.size, args.batch, args.steps)
            diffs = round_trip(arch, args.scale, args.device, args.size, Path(tmp))
            results[arch] = {"params_m": round(info.num_params / 1e6, 3), "step_ms": round(ms, 2),
                             "max_abs_diff": diffs}
            print(arch, results[arch], flush=True)
    base = results.get("rrdb-6b", {}).get("step_ms")
    for r in results.values():
        r["step_vs_rrdb6b"] = round(r["step_ms"] / base, 3) if base else None
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(json.dumps({"device": device_name, "scale": args.scale, "lr_size": args.size, "batch": args.batch,
                      "archs": results}))


if __name__ == "__main__":
    main()

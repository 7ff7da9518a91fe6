"""Helpers for tests that launch 2-process `awm train` runs: commands, environment, signals, state.

A run here is tiny (a 4-conv Compact net and a narrow discriminator on 32 px patches), so a
2-process run takes seconds of compute; the launchers' start-up dominates.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch
from pairs import make_pair_shards
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
STATE_FILES = ("model.safetensors", "model_1.safetensors", "custom_checkpoint_1.pkl")


def make_data(root: Path, train_shards: list[int], hr_only: bool = False) -> Path:
    """Train shards of ``train_shards`` pairs each (96x64 HR; HR only to degrade on the fly), 2 eval pairs."""
    make_pair_shards(root / "train", train_shards, size=(96, 64), hr_only=hr_only)
    make_pair_shards(root / "eval", [2], size=(64, 64), split="eval", seed=5)
    return root


def tiny(data: Path, runs: Path, name: str, **kw) -> list[str]:
    """``key=value`` overrides of a tiny, deterministic tiny-cpu run on the shards under ``data``."""
    base = {"name": name, "runs": runs, "data.train": data / "train", "data.eval": data / "eval", "data.patch": 32,
            "data.batch_size": 4, "data.workers": 1, "model.hparams.num_feat": 16, "model.hparams.num_conv": 4,
            "model.discriminator.num_feat": 16, "log.every": 1, "validation.every": 0, "validation.max_images": 2,
            "validation.crop": 32, "checkpoint.state_every": 1000, "deterministic": "true"}
    base.update(kw)
    return ["--config", "tiny-cpu", *(f"{k}={v}" for k, v in base.items())]


def env(**extra: str) -> dict[str, str]:
    """A hermetic child environment: nothing an in-process run or a launcher left behind."""
    drop = ("ACCELERATE_USE_CPU", "ACCELERATE_MIXED_PRECISION", "RANK", "WORLD_SIZE", "LOCAL_RANK",
            "MASTER_ADDR", "MASTER_PORT", "AWM_FAULT_NONFINITE_STEP")
    clean = {k: v for k, v in os.environ.items() if k not in drop}
    return {**clean, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def torchrun(port: int, args: list[str], module: bool = True) -> list[str]:
    return [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(port),
            *(["-m", "awm", "train"] if module else []), *args]


def accelerate_launch(port: int, args: list[str]) -> list[str]:
    """2 ranks through `accelerate launch` (launch/cpu-2proc.yaml: accelerate starts them via torchrun)."""
    return [str(BIN / "accelerate"), "launch", "--config_file", str(ROOT / "launch" / "cpu-2proc.yaml"),
            "--main_process_port", str(port), "-m", "awm", "train", *args]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (ranks, loader workers), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def run_and_signal(cmd: list[str], trigger: str, everyone: bool, timeout: float = 600,
                   sig: signal.Signals = signal.SIGTERM, group: bool = False) -> tuple[int, str]:
    """Start ``cmd``; when a stderr line contains ``trigger``, send ``sig`` to the launcher
    (``everyone``: the launcher and every process below it at once, as SLURM does; ``group``: the
    launcher's process group, as Ctrl-C in a terminal does). Returns (exit code, stderr)."""
    p = subprocess.Popen(cmd, env=env(), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=ROOT,
                         start_new_session=group)
    seen = []
    for line in p.stderr:
        seen.append(line)
        if trigger in line:
            if group:
                os.killpg(p.pid, sig)
            for pid in [] if group else [p.pid] + (descendants(p.pid) if everyone else []):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            break
    rest = p.communicate(timeout=timeout)[1]
    return p.returncode, "".join(seen) + rest


def rerun_resumes(cmd: list[str], run_dir: Path) -> int:
    """Run a stopped run's command again: it must resume from the state it saved and finish.
    Returns the step that state was saved at."""
    state = run_dir / "state"
    stopped = json.loads((state / "complete.json").read_text())["step"]
    again = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from {state} at step {stopped}" in again.stderr
    return stopped


def assert_same_state(a: Path, b: Path) -> None:
    """Generator, discriminator and EMA of two full states are bitwise equal."""
    for f in STATE_FILES:
        if f.endswith(".safetensors"):
            wa, wb = load_file(a / f), load_file(b / f)
        else:
            wa, wb = torch.load(a / f, weights_only=True), torch.load(b / f, weights_only=True)
        assert wa.keys() == wb.keys(), f
        assert all(torch.equal(wa[k], wb[k]) for k in wa), f

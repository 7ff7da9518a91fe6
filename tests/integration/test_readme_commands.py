"""The README's stage-by-stage commands, run as a new user would: from a directory outside the
repository, on generated wallpapers, through a shell (``$(awm launch-config ...)``, ``runs/*``).

Sizes and steps are tiny; every command keeps the README's shape, and the test checks that the
README still shows each one. Everything runs under umask 022, and at the end every file AWM wrote
(shards, indexes, checkpoints, exports, reports, upscaled images) must be readable by group and
others, every folder enterable.
"""

from __future__ import annotations

import csv
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support import free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow

TINY = ("steps=4 log.every=2 data.patch=32 data.batch_size=2 model.hparams.num_feat=8 model.hparams.num_conv=2 "
        "validation.max_images=2 validation.crop=32")
# (what the README shows, what this test runs: the same command with tiny sizes)
COMMANDS = [
    ("awm ingest ~/Pictures/wallpapers --out shards/raw-local",
     "awm ingest wallpapers --out shards/raw"),
    ("awm ingest ~/Pictures/wallpapers --out shards/raw-local",
     "awm ingest wallpapers-eval --out shards/raw-eval"),
    ("awm shard --in shards/raw --out shards/train --split train --tile 512 --scales 2,4 --preset seed --workers 8",
     "awm shard --in shards/raw --out shards/train --split train --tile 64 --scales 2,4 --preset seed --workers 2"),
    ("awm shard --in shards/raw-eval --out shards/eval --split eval --scales 2,4 --preset seed",
     "awm shard --in shards/raw-eval --out shards/eval --split eval --scales 2,4 --preset seed"),
    ("awm shard --in shards/raw --out shards/train-hr --split train --tile 512 --hr-only",
     "awm shard --in shards/raw --out shards/train-hr --split train --tile 64 --hr-only"),
    ('accelerate launch --config_file "$(awm launch-config cpu-2proc)" -m awm train --config tiny-cpu',
     f'accelerate launch --config_file "$(awm launch-config cpu-2proc)" --main_process_port {{port}} '
     f'-m awm train --config tiny-cpu {TINY}'),
    ("awm train --config tiny-cpu data.train=shards/raw data.degrade=realesrgan",
     f"awm train --config tiny-cpu data.train=shards/raw data.degrade=realesrgan name=hr {TINY}"),
    ("awm eval --data shards/eval --scale 2 --models bicubic,lanczos,runs/",
     "awm eval --data shards/eval --scale 2 --models bicubic,lanczos,runs/tiny-cpu "
     "--metrics psnry,ssim,niqe_anime --out results/x2"),
    ("awm report runs/* --out results/experiments",
     "awm report runs/* --out results/experiments"),
    ("awm export runs/my-run --out release/ --author me --license CC-BY-4.0 --fp16 --pth",
     "awm export runs/tiny-cpu --out release/ --author me --license CC-BY-4.0 --fp16 --pth"),
    ("awm upscale --model runs/rrdb-6b-x4 wallpapers/ --out upscaled/ --tile 512 --tile-pad 32",
     "awm upscale --model runs/tiny-cpu wallpapers/ --out upscaled/ --tile 64 --tile-pad 8"),
    ("awm convert runs/x/checkpoints/best --out x.pth",
     "awm convert runs/tiny-cpu/checkpoints/best --out x.pth"),
    ("awm convert runs/x/checkpoints/best --out x.pth",
     "awm convert runs/tiny-cpu/checkpoints/best --out x.safetensors"),
]


def test_readme_shows_these_commands():
    readme = (ROOT / "README.md").read_text()
    missing = [shown for shown, _ in COMMANDS if shown not in readme]
    assert not missing, f"README no longer shows: {missing}; update this test with it"


def _shell(cmd: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("ACCELERATE_USE_CPU", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(PATH=f"{BIN}:{env.get('PATH', '')}", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1",
               XDG_CACHE_HOME=str(cwd / ".cache"))
    return subprocess.run(["bash", "-c", cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
                          preexec_fn=lambda: os.umask(0o022))


def test_readme_stage_commands_run_outside_the_repository(tmp_path):
    from awm.data.synth import write_dataset

    work = tmp_path / "newuser"
    assert ROOT not in work.parents
    write_dataset(work / "wallpapers", 8, seed=1, long_side=(160, 224))
    write_dataset(work / "wallpapers-eval", 2, seed=2, long_side=(160, 224))
    for _, cmd in COMMANDS:
        cmd = cmd.replace("{port}", str(free_port()))  # chosen when it runs, by the OS
        r = _shell(cmd, work)
        assert r.returncode == 0, f"{cmd}\n{r.stderr[-3000:]}"

    assert json.loads((work / "shards" / "train-hr" / "index.json").read_text())["hr_only"] is True
    assert json.loads((work / "runs" / "hr" / "train_stats.json").read_text())["status"] == "done"
    with open(work / "results" / "experiments" / "report.csv", newline="") as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"tiny-cpu", "hr", "bicubic (baseline)", "lanczos (baseline)"}
    assert rows["tiny-cpu"]["psnry"] and rows["bicubic (baseline)"]["psnry"]  # eval found outside the run
    assert len(list((work / "upscaled").glob("*_x2.png"))) == 8
    card = (work / "release" / "README.md").read_text()  # the eval above was found from the run folder
    assert "| validation (last, vs bicubic on the same crops) | PSNR-Y " in card, card
    assert "| bicubic |" in card and "` vs bicubic: " in card, card

    unreadable = []
    for p in work.rglob("*"):
        if ".cache" in p.parts or p.is_symlink():
            continue
        mode = stat.S_IMODE(p.stat().st_mode)
        want = 0o055 if p.is_dir() else 0o044
        if mode & want != want:
            unreadable.append(f"{oct(mode)} {p.relative_to(work)}")
    assert not unreadable, "\n".join(unreadable)
    for name in ("x.pth", "x.safetensors", "runs/tiny-cpu/checkpoints/best/model.safetensors",
                 "runs/tiny-cpu/state/model.safetensors", "shards/train/train-000000.tar",
                 "shards/train/index.json", "results/x2/summary.md", "results/experiments/report.md"):
        assert stat.S_IMODE((work / name).stat().st_mode) == 0o644, name

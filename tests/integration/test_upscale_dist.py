"""``awm upscale`` under torchrun: two processes split the inputs and agree on one summary."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from awm.data import synth
from awm.imageio import encode_image, read_image
from awm.models.archs import build_model
from awm.models.checkpoint import save_checkpoint


@pytest.mark.slow
def test_two_processes_split_the_inputs(tmp_path):
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "ckpt", build_model("compact-tiny", 2), "compact-tiny", {}, 2, 0)
    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        (src / f"img{i}.png").write_bytes(encode_image(synth.generate(i, 24 + 4 * i, 16), "png"))
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "awm", "upscale",
                           "--model", str(ckpt), str(src), "--out", str(tmp_path / "out"), "--tile", "16",
                           "--tile-pad", "4"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0, proc.stderr[-3000:]  # one input is broken: the run reports failure
    stats = json.loads((tmp_path / "out" / "upscale_stats.json").read_text())
    assert stats["world_size"] == 2 and stats["images_per_rank"] == [3, 2]
    assert stats["ok"] == 4 and list(stats["errors"]) == [str(src / "broken.png")]
    for i in range(4):
        assert read_image(tmp_path / "out" / f"img{i}_x2.png").shape == (32, 2 * (24 + 4 * i), 3)

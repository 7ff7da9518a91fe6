"""awm eval / score end to end: 1 process vs torchrun with 2 (CPU), staged NIQE, offline weight errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from luma_ties import REL64, pyiqa_on_luma, tie_tolerance  # noqa: E402
from pairs import make_pair_shards  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO / ".." / "shared" / "data"
VENV_BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _awm(args: list[str], nproc: int = 1, env: dict | None = None) -> subprocess.CompletedProcess:
    if nproc == 1:
        cmd = [sys.executable, "-m", "awm", *args]
    else:
        cmd = [str(VENV_BIN / "torchrun"), "--standalone", f"--nproc_per_node={nproc}", "-m", "awm", *args]
    return subprocess.run(cmd, cwd=REPO, env=env or _env(), capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory) -> Path:
    # 7 samples over 2 shards (does not divide by 2 ranks); one truncated sample is skipped by every run
    return make_pair_shards(tmp_path_factory.mktemp("evaldata"), [4, 3], scales=(2,), size=(192, 192),
                            seed=3, split="eval", corrupt=("img00005",))


def test_two_ranks_equal_one_rank(eval_data: Path, tmp_path: Path) -> None:
    from awm.models.archs import build_model
    from awm.models.checkpoint import save_checkpoint

    ckpt = save_checkpoint(tmp_path / "ckpt", build_model("compact-tiny", 2), "compact-tiny", {}, 2, step=0)
    common = ["eval", "--data", str(eval_data), "--scale", "2", "--models", f"bicubic,lanczos,{ckpt}",
              "--metrics", "psnry,ssim,niqe_anime", "--grid", "3", "--tile", "64", "--tile-pad", "8"]
    one = _awm([*common, "--out", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr[-3000:]
    two = _awm([*common, "--out", str(tmp_path / "two")], nproc=2)
    assert two.returncode == 0, two.stderr[-3000:]

    rows1 = (tmp_path / "one" / "per_image.csv").read_text()
    rows2 = (tmp_path / "two" / "per_image.csv").read_text()
    assert rows1 == rows2
    lines = rows1.splitlines()
    assert lines[0] == "model,image,id,index,psnry,ssim,niqe_anime"
    pairs = [tuple(line.split(",")[:4]) for line in lines[1:]]
    assert len(pairs) == len(set(pairs)) == 18  # 6 decodable samples x 3 models, none twice
    assert {p[3] for p in pairs} == {"0", "1", "2", "3", "4", "6"}

    s1 = json.loads((tmp_path / "one" / "summary.json").read_text())
    s2 = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert s1["models"] == s2["models"]
    assert s1["skipped"] == s2["skipped"] == {"truncated": 1}
    assert list(s1["models"]) == ["bicubic", "lanczos", str(ckpt)]
    assert s1["models"]["bicubic"]["psnry"]["count"] == s1["models"][str(ckpt)]["ssim"]["count"] == 6
    assert s1["metrics"]["niqe_anime"]["lower_better"] is True
    assert s1["metrics"]["psnry"]["lower_better"] is False
    stats2 = json.loads((tmp_path / "two" / "eval_stats.json").read_text())
    assert stats2["world_size"] == 2 and sorted(r["samples"] for r in stats2["ranks"]) == [3, 4]

    md = (tmp_path / "two" / "summary.md").read_text()
    assert "psnry ↑" in md and "niqe_anime ↓" in md and "**" in md
    figs = {p.name for p in (tmp_path / "two" / "figures").iterdir()}
    assert {"psnry.png", "ssim.png", "niqe_anime.png", "grid.png"} <= figs


def test_score_two_ranks_equal_one_rank(eval_data: Path, tmp_path: Path) -> None:
    from awm.data.synth import generate
    from awm.imageio import encode_image

    for i in range(5):
        folder = tmp_path / ("a" if i < 3 else "b")
        folder.mkdir(exist_ok=True)
        (folder / f"{i}.png").write_bytes(encode_image(generate(50 + i, 192, 192), "png"))
    args = ["score", str(tmp_path / "a"), str(tmp_path / "b"), "--metrics", "niqe_anime"]
    one = _awm([*args, "--out", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr[-3000:]
    two = _awm([*args, "--out", str(tmp_path / "two")], nproc=2)
    assert two.returncode == 0, two.stderr[-3000:]
    assert (tmp_path / "one" / "per_image.csv").read_text() == (tmp_path / "two" / "per_image.csv").read_text()
    s = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert [s["inputs"][k]["niqe_anime"]["count"] for k in s["inputs"]] == [3, 2]


@pytest.mark.skipif(not (SHARED / "weights" / "niqe_modelparameters.mat").is_file(),
                    reason="../shared/data/weights is absent")
def test_staged_standard_niqe_matches_pyiqa(tmp_path: Path, monkeypatch) -> None:
    hub = tmp_path / "torch"
    env = _env(TORCH_HOME=str(hub))
    staged = _awm(["weights", "stage", "--from", str(SHARED / "weights")], env=env)
    assert staged.returncode == 0, staged.stderr
    assert (hub / "hub" / "pyiqa" / "niqe_modelparameters.mat").is_file()
    verify = _awm(["weights", "verify"], env=env)
    assert "\npresent  niqe_modelparameters.mat  " in verify.stdout

    import pyiqa
    import torch

    from awm.eval import fast_metrics, metrics
    from awm.imageio import read_image, to_rgb8, to_tensor

    monkeypatch.setenv("TORCH_HOME", str(hub))
    ours = metrics.create("niqe", "cpu")
    ref = pyiqa.create_metric("niqe", device="cpu",
                              pretrained_model_path=str(SHARED / "weights" / "niqe_modelparameters.mat"))
    model = SHARED / "weights" / "niqe_modelparameters.mat"
    for name in ("realesrgan_comic.png", "waifu2x_miku_bg.png"):
        img = to_rgb8(read_image(SHARED / "real" / name))
        y = fast_metrics.luma(img, "yiq", True)
        on_luma, grads = pyiqa_on_luma(ref.net, [y])  # the same luma: float64 from there on, on any CPU
        assert fast_metrics.niqe_luma(y, model) == pytest.approx(on_luma, rel=REL64, abs=REL64), name
        # from RGB, pyiqa's float32 luma may put tie colours on the other level (tests/luma_ties.py)
        with torch.inference_mode():
            expected = float(ref(to_tensor(img)))
        tol = tie_tolerance(lambda ys: fast_metrics.niqe_luma(ys[0], model), [img], [y], grads)
        assert ours(img) == pytest.approx(expected, rel=0, abs=tol + REL64 * abs(expected)), name


def test_missing_weights_fail_fast_offline(tmp_path: Path) -> None:
    """The check runs before pyiqa is imported, so its ~40 s of download retries never start."""
    code = ("import sys\nfrom awm.eval import metrics\ntry:\n    metrics.create('lpips', 'cpu')\n"
            "except metrics.MissingWeightsError as e:\n    print(e)\n"
            "assert 'pyiqa' not in sys.modules, 'pyiqa was imported before the weight check'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env=_env(TORCH_HOME=str(tmp_path / "empty")))
    assert r.returncode == 0, r.stderr[-3000:]
    msg = r.stdout
    assert "LPIPS_v0.1_alex-df73285e.pth" in msg and "alexnet-owt-7be5be79.pth" in msg
    assert "awm weights stage --from DIR" in msg


def test_missing_weights_cli_exit(eval_data: Path, tmp_path: Path) -> None:
    res = _awm(["eval", "--data", str(eval_data), "--metrics", "psnry,niqe", "--out", str(tmp_path / "o")],
               env=_env(TORCH_HOME=str(tmp_path / "empty")))
    assert res.returncode == 1
    assert "niqe_modelparameters.mat" in res.stderr and "awm weights stage" in res.stderr
    assert not (tmp_path / "o" / "per_image.csv").exists()


def _raw(d: Path) -> Path:
    from awm.shardwrite import ShardStats, write_index, write_shard

    d.mkdir(parents=True)
    write_shard(d / "raw-000000.tar", [{"__key__": "a", "png": b"\x89PNG", "json": {"id": "a"}}], ShardStats("raw-000000.tar"))
    write_index(d, "raw-")
    return d


@pytest.mark.parametrize("case", ["other_scale", "raw_shards", "nothing_decodes"])
def test_nothing_scorable_exits_1_naming_counts_and_writes_nothing(case: str, eval_data: Path, tmp_path: Path) -> None:
    data, scale, want = {
        "other_scale": (eval_data, 3, "none of the 7 samples at {d} can be scored at x3 ({{'no_lr_x3': 7}}): "
                                      "the samples hold lr_x2; make eval pairs with awm shard --split eval --scales 3"),
        "raw_shards": (None, 2, "({{'no_hr': 1}}): raw-*.tar shards hold originals only"),
        "nothing_decodes": (None, 2, "no sample of {d} was scored at x2 (skipped: {{'truncated': 2}})"),
    }[case]
    if case == "raw_shards":
        data = _raw(tmp_path / "raw")
    elif case == "nothing_decodes":
        data = make_pair_shards(tmp_path / "bad", [2], split="eval", corrupt=("img00000", "img00001"))
    out = tmp_path / "o"
    res = _awm(["eval", "--data", str(data), "--scale", str(scale), "--metrics", "psnry", "--out", str(out)])
    assert res.returncode == 1
    lines = [x for x in res.stderr.splitlines() if "eval failed" in x]
    assert len(lines) == 1 and want.format(d=data) in lines[0], res.stderr[-3000:]
    assert not out.exists()

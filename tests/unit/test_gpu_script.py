"""tests/gpu/run.sh, the one-GPU check script: on a machine without a GPU it says so and exits
non-zero without a traceback; its driver appends one JSON line per section as it ends (CPU dry
run), shows the two-call recipe, keeps what it wrote when killed; its fp16 check catches a
double unscale."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
pytestmark = pytest.mark.slow  # each test starts run.sh and its section processes: out of make test-fast


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "tests" / "gpu" / "run.sh"), *args], capture_output=True, text=True,
                          timeout=900, env=ENV)


@pytest.fixture(scope="module")
def checks():
    sys.path.insert(0, str(ROOT / "tests" / "gpu"))
    try:
        import gpu_checks
    finally:
        sys.path.remove(str(ROOT / "tests" / "gpu"))
    return gpu_checks


def test_without_a_gpu_it_says_so_and_exits_nonzero():
    p = _run()
    assert p.returncode == 3, p.stdout + p.stderr
    assert "no CUDA GPU found" in p.stdout and "--cpu-dry-run" in p.stdout
    assert "Traceback" not in p.stdout + p.stderr


def test_cpu_dry_run_prints_the_recipe_and_one_json_line_per_section(tmp_path, checks):
    out = tmp_path / "gpu.jsonl"
    p = _run("--cpu-dry-run", "--sections", "fused_adamw_found_inf,train_compile_default,multi_rank_note",
             "--out", str(out))
    assert p.returncode == 0, p.stdout + p.stderr
    lines = [json.loads(ln) for ln in p.stdout.strip().splitlines()]
    assert [json.loads(ln) for ln in out.read_text().splitlines()] == lines
    head, *sections, tail = lines
    recipe = head["recipe"]
    assert sorted(recipe) == ["call1", "call2"]
    named = [s for c in recipe.values() for s in c["sections"]]
    assert sorted(named) == sorted(s.name for s in checks.SECTIONS)  # every section in exactly one call
    for c in recipe.values():
        assert c["timeout_s"] <= 600 and c["budget_s"] < c["timeout_s"] and "--call" in c["command"]
    assert sum(c["timeout_s"] for c in recipe.values()) <= 15 * 60 - 120  # room for a cold start
    got = {s["section"]: s for s in sections}
    assert sorted(got) == ["fused_adamw_found_inf", "multi_rank_note", "train_compile_default"]
    assert got["fused_adamw_found_inf"]["status"] == "pass" and got["multi_rank_note"]["status"] == "skipped"
    assert got["train_compile_default"]["status"] == "skipped"  # CUDA-only sections are left out of a dry run
    assert tail["summary"]["passed"] == 1 and tail["summary"]["failed"] == 0
    assert tail["summary"]["defects"]["21.6 silent CPU fallback"] == {"device_cuda": "not chosen"}
    assert _run("--sections", "nonsense", "--cpu-dry-run", "--out", str(tmp_path / "x.jsonl")).returncode == 2


def test_a_killed_run_keeps_the_sections_it_finished(tmp_path):
    """The device's time limit kills the script: every section that ended is already in --out."""
    out = tmp_path / "gpu.jsonl"
    proc = subprocess.Popen(["bash", str(ROOT / "tests" / "gpu" / "run.sh"), "--cpu-dry-run", "--jobs", "1",
                             "--sections", "fused_adamw_found_inf,train_e2e", "--out", str(out)],
                            stdout=subprocess.PIPE, text=True, env=ENV, start_new_session=True)
    try:
        for line in proc.stdout:
            if json.loads(line).get("section") == "fused_adamw_found_inf":
                break
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=600)
        proc.stdout.close()
    kept = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert "recipe" in kept[0] and kept[1]["section"] == "fused_adamw_found_inf" and kept[1]["status"] == "pass"
    assert not any("summary" in k for k in kept)


def test_the_fp16_check_tells_a_once_unscaled_update_from_a_double_unscale(checks):
    """reference_adamw is what train_fp16_gan_clip compares each optimizer's real update with: an
    AdamW step on gradients unscaled once matches it, one on gradients unscaled twice (issue 29's
    discriminator) does not."""
    scale = 2.0 ** 16
    gen = torch.Generator().manual_seed(0)
    results = {}
    for unscale in (1, 2):
        p = torch.nn.Parameter(torch.randn(256, generator=gen))
        opt = torch.optim.AdamW([p], lr=1e-3, betas=(0.9, 0.99), weight_decay=0.01, foreach=True)
        for step in range(3):
            grad = torch.randn(256, generator=gen) * 1e-3
            p.grad = grad * scale  # as backward of the scaled loss leaves it
            ref = checks.reference_adamw(opt, [p], scale, clip=1.0)
            before = p.detach().clone()
            p.grad = grad * scale / scale ** unscale  # clip=1.0 leaves these small gradients as they are
            opt.step()
            got = p.detach() - before
            results[(unscale, step)] = float((got - ref).norm() / ref.norm())
    assert max(results[(1, s)] for s in range(3)) < 1e-4, results
    assert min(results[(2, s)] for s in range(3)) > 0.2, results

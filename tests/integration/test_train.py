"""awm train end to end with real processes: torchrun/accelerate on CPU (gloo), exact resume after
SIGTERM, uneven shards, DeepSpeed ZeRO-2 bf16 (2 processes), TensorBoard contents."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pairs import make_pair_shards  # noqa: E402
from support import free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("train_data")
    make_pair_shards(d / "train", [1, 9, 2], size=(128, 96))  # deliberately uneven
    make_pair_shards(d / "eval", [3], size=(128, 96), split="eval", seed=5)
    return d


def overrides(data: Path, runs: Path, **kw) -> list[str]:
    base = {"runs": runs, "data.train": data / "train", "data.eval": data / "eval", "data.patch": 32,
            "data.batch_size": 4, "data.workers": 1, "log.every": 1, "validation.every": 10,
            "validation.crop": 64, "checkpoint.state_every": 1000}
    base.update(kw)
    return [f"{k}={v}" for k, v in base.items()]


def env() -> dict[str, str]:
    """The children's environment, without what in-process runs of this session left behind."""
    clean = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}
    return {**clean, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def scalars(tb: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    out = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}
    out["__images__"] = acc.Tags()["images"]
    return out


def test_two_process_torchrun_trains_and_logs(data, tmp_path):
    cmd = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()), "-m", "awm", "train",
           "--config", "tiny-cpu", *overrides(data, tmp_path, steps=36, gan_start=28,
                                                                   **{"perf.peak_tflops": 0.05})]
    r = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "tiny-cpu"
    # says what it trains on, where, which stages; when the GAN stage starts; where the result is
    said = r.stderr
    assert (f"run {run}: compact x2; train {data / 'train'} (12 pairs in 3 shards), eval {data / 'eval'} (3 pairs); "
            "2 process(es) on cpu, fp32; L1 stage to step 28, then the GAN stage (l2 x1 + gan x0.1, with a "
            "discriminator) to step 36") in said, said[-3000:]
    assert said.count("step 28: the GAN stage starts (gan_start=28)") == 1, said[-3000:]
    assert f"run {run} done: step 36 in " in said and f"{run / 'checkpoints' / 'best'}; last: " in said, said[-3000:]
    assert "broadcast_buffers" not in said, said[-3000:]  # no deprecation warning per rank
    s = scalars(run / "tb")
    pixel = [v for step, v in s["loss/pixel"] if step <= 28]
    assert sum(pixel[-6:]) / 6 < sum(pixel[:6]) / 6
    for tag in ("loss/total", "loss/gan", "loss/d_real", "loss/d_fake", "lr/g", "lr/d", "grad_norm/g",
                "grad_norm/d", "perf/samples_per_s", "perf/data_wait_fraction", "perf/tflops", "perf/mfu",
                "val/psnr_y", "val/bicubic_psnr_y", "val/ssim_y",
                "data/skipped", "train/nan_skips"):
        assert tag in s, tag
    assert s["__images__"] == ["val/lr_bicubic_sr_hr"]
    from awm.models.checkpoint import load_model

    for which in ("best", "last"):
        m = load_model(run / "checkpoints" / which)
        assert m.arch == "compact" and m.scale == 2
    stats = json.loads((run / "train_stats.json").read_text())
    assert stats["status"] == "done" and stats["world_size"] == 2 and stats["step"] == 36
    assert 0 < stats["flops_per_pair"]["l1"] < stats["flops_per_pair"]["gan"]  # recounted for the GAN stage
    tflops = dict(s["perf/tflops"])
    assert all(v > 0 for v in tflops.values())
    assert dict(s["perf/mfu"])[36] == pytest.approx(tflops[36] / 0.05)


def test_resume_after_sigterm_is_bitwise_exact(data, tmp_path):
    """N steps straight vs. SIGTERM part-way + automatic resume: same weights, EMA, D and losses."""
    args = ["--config", "tiny-cpu", *overrides(data, tmp_path, steps=24, gan_start=14, deterministic="true",
                                                **{"data.workers": 2})]
    cmd = [sys.executable, "-m", "awm", "train"]
    straight = subprocess.run(cmd + args + ["name=straight"], env=env(), capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr[-3000:]
    p = subprocess.Popen(cmd + args + ["name=resumed"], env=env(), stderr=subprocess.PIPE, text=True)
    for line in p.stderr:
        if "step 9/24" in line:
            p.send_signal(signal.SIGTERM)
            break
    err = p.communicate(timeout=300)[1]
    assert p.returncode == 75, err[-3000:]  # preempted: requeue me
    stopped = json.loads((tmp_path / "resumed" / "state" / "complete.json").read_text())
    assert 9 <= stopped["step"] < 24
    again = subprocess.run(cmd + args + ["name=resumed"], env=env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from {tmp_path / 'resumed' / 'state'} at step {stopped['step']}" in again.stderr
    a, b = tmp_path / "straight" / "state", tmp_path / "resumed" / "state"
    for f in ("model.safetensors", "model_1.safetensors"):
        wa, wb = load_file(a / f), load_file(b / f)
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), f
    ema_a = torch.load(a / "custom_checkpoint_1.pkl", weights_only=True)
    ema_b = torch.load(b / "custom_checkpoint_1.pkl", weights_only=True)
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    sa, sb = scalars(tmp_path / "straight" / "tb"), scalars(tmp_path / "resumed" / "tb")
    for tag in ("loss/pixel", "loss/gan", "loss/d_fake", "grad_norm/g", "lr/g"):
        assert dict(sa[tag]) == dict(sb[tag]), tag
    assert len(dict(sa["loss/pixel"])) == 24


def test_accelerate_launch_two_ranks_uneven_shards_no_hang(tmp_path):
    """Fewer shards than ranks x workers, of unequal sizes: every rank still does every step."""
    d = make_pair_shards(tmp_path / "tiny", [1, 4], size=(64, 64))
    cmd = [str(BIN / "accelerate"), "launch", "--config_file", str(ROOT / "launch" / "cpu-2proc.yaml"),
           "--main_process_port", str(free_port()), "-m", "awm", "train", "--config", "tiny-cpu",
           *overrides(tmp_path, tmp_path / "runs", steps=8, gan_start=8, **{
               "data.train": d, "data.eval": d, "data.workers": 2, "validation.every": 0})]
    r = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    stats = json.loads((tmp_path / "runs" / "tiny-cpu" / "train_stats.json").read_text())
    assert stats["world_size"] == 2 and stats["step"] == 8 and stats["status"] == "done"


def test_deepspeed_zero2_bf16_two_processes_trains_and_resumes(data, tmp_path):
    """ZeRO-2 through Accelerate on CPU, 2 processes (gloo), bf16 weights: the LR batch is cast to
    the engine's dtype (DeepSpeed casts parameters, never inputs, and Accelerate's autocast is off
    under DeepSpeed), the loss is finite and falls, and a longer rerun resumes from the state.
    Every artifact term is on: LDL runs the float32 EMA generator on the bf16 batch (it crashed at
    step 0: "Input type (c10::BFloat16) and bias type (float)"). ``device=cpu``: a DeepSpeed launch
    otherwise asks for a GPU (DeepSpeed would quietly take its CPU accelerator).
    The GAN stage starts inside the first run (it was refused under DeepSpeed): the float32
    discriminator (torch DDP, outside the engine) and a VGG term (a one-layer backbone, cast to
    bf16) get the bf16 output; the rerun resumes the discriminator and its optimizer."""
    import deepspeed  # noqa: F401  (a hard dependency: an import error fails the test)
    import torchvision

    vgg = tmp_path / "vgg19.pth"
    torch.manual_seed(0)
    layers = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["E"])[:4]  # up to conv1_2's ReLU
    torch.save({f"features.{k}": v for k, v in layers.state_dict().items()}, vgg)

    def launch(steps: int) -> subprocess.CompletedProcess:
        cmd = [str(BIN / "accelerate"), "launch", "--config_file", str(ROOT / "launch" / "deepspeed-zero2.yaml"),
               "--num_processes", "2", "--main_process_port", str(free_port()), "-m", "awm", "train", "--config", "tiny-cpu",
               *overrides(data, tmp_path, steps=steps, gan_start=4, precision="bf16", device="cpu", **{
                   "optim.accum": 2, "validation.every": 0, "schedule.warmup_steps": 0, "optim.lr_g": 2e-3,
                   "loss.ldl.weight": 0.1, "loss.ffl.weight": 0.1, "loss.color.weight": 0.1,
                   "loss.msssim.weight": 0.1, "loss.perceptual.vgg_weight": 0.1, "loss.perceptual.vgg_path": vgg,
                   "loss.perceptual.vgg_layers": "{conv1_2: 1.0}"})]
        return subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=900, cwd=ROOT)

    r = launch(8)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "tiny-cpu"
    stats = json.loads((run / "train_stats.json").read_text())
    assert stats["world_size"] == 2 and stats["precision"] == "bf16" and stats["status"] == "done"
    state = run / "state"
    assert (state / "pytorch_model").is_dir() and (state / "complete.json").is_file()  # DeepSpeed's layout
    assert {p.name for p in (state / "pytorch_model").glob("bf16_zero_pp_rank_*")} == {
        "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt", "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt"}
    d_opt = state / "custom_checkpoint_3.pkl"  # after the counters and the EMA: discriminator, its optimizer
    assert {float(s["step"]) for s in torch.load(d_opt, weights_only=False)["state"].values()} == {4.0}
    again = launch(14)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from {state} at step 8" in again.stderr and "starts fresh" not in again.stderr
    # 10 GAN steps in all: the rerun's optimizer continued the first run's 4 (a fresh one would count 6)
    assert {float(s["step"]) for s in torch.load(d_opt, weights_only=False)["state"].values()} == {10.0}
    logged = scalars(run / "tb")
    pixel = [v for _, v in sorted(logged["loss/pixel"])]
    assert len(pixel) == 14 and all(math.isfinite(v) for v in pixel)
    for term in ("ldl", "ffl", "color", "msssim"):
        assert len(logged[f"loss/{term}"]) == 14 and all(math.isfinite(v) for _, v in logged[f"loss/{term}"])
    for term in ("gan", "perceptual_vgg", "d_real", "d_fake"):  # the GAN stage: steps 5..14 (logged after a step)
        assert sorted(step for step, _ in logged[f"loss/{term}"]) == list(range(5, 15)), term
        assert all(math.isfinite(v) for _, v in logged[f"loss/{term}"]), term
    assert [v for _, v in sorted(logged["train/stage"])] == [1.0] * 4 + [2.0] * 10
    assert all(math.isfinite(v) and v > 0 for _, v in logged["grad_norm/d"])
    assert sum(pixel[-4:]) / 4 < sum(pixel[:4]) / 4


def test_in_process_request_stop_then_reentrant_resume(data, tmp_path):
    """What `awm submit` does: train() in-process, request_stop() from elsewhere, train() again.
    The stop acts within steps, not at the next log step (log.every is past the end here)."""
    import threading

    from awm.train.train import load_config, request_stop, train

    cfg = load_config("tiny-cpu", overrides(data, tmp_path, steps=400, gan_start=400, **{
        "validation.every": 0, "data.workers": 0, "log.every": 1000}))
    tb = tmp_path / "tiny-cpu" / "tb"

    def stop_when_started():
        while not tb.exists():
            threading.Event().wait(0.05)
        request_stop()

    threading.Thread(target=stop_when_started, daemon=True).start()
    first = train(cfg)
    assert first["status"] == "preempted" and 0 < first["step"] < 400
    cfg.steps = first["step"] + 3
    second = train(cfg)
    assert second["status"] == "done" and second["step"] == first["step"] + 3


def test_non_finite_steps_are_skipped_then_the_run_stops_with_state(data, tmp_path):
    """An absurd learning rate blows the weights up after one step: later steps are skipped and
    counted, and after max_nan_skips in a row the run stops with status 'nan' and a saved state."""
    from awm.train.train import load_config, train

    cfg = load_config("tiny-cpu", overrides(data, tmp_path, steps=40, gan_start=40, max_nan_skips=3, **{
        "optim.lr_g": 1e30, "schedule.warmup_steps": 0, "validation.every": 0, "data.workers": 0}))
    stats = train(cfg)
    assert stats["status"] == "nan" and stats["nan_skips"] == 3 and stats["step"] < 40
    assert json.loads((tmp_path / "tiny-cpu" / "state" / "complete.json").read_text())["step"] == stats["step"]
    assert scalars(tmp_path / "tiny-cpu" / "tb")["train/nan_skips"][-1][1] >= 2


@pytest.mark.parametrize("first,then", [("default", "none"), ("none", "default")])
def test_resume_across_a_compile_toggle(data, tmp_path, first, then):
    """A state saved with model.compile=default resumes with compile=none and the other way round:
    saved model states carry the bare module's keys (torch.compile adds ``_orig_mod.``, DDP ``module.``).
    Inductor on the CPU, a 2-conv net: ~100 s for the first compile on a fresh machine, seconds
    from its cache after."""
    from safetensors.torch import load_file

    from awm.train.train import load_config, train

    def run(steps: int, mode: str) -> dict:
        return train(load_config("tiny-cpu", overrides(data, tmp_path, steps=steps, gan_start=steps, **{
            "model.compile": mode, "model.hparams.num_feat": 8, "model.hparams.num_conv": 2, "ema.enabled": "false",
            "validation.every": 0, "validation.max_images": 1, "data.workers": 0})))

    assert run(2, first)["status"] == "done"
    state = tmp_path / "tiny-cpu" / "state"
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in load_file(state / "model.safetensors"))
    assert run(3, then)["step"] == 3
    assert json.loads((state / "complete.json").read_text())["step"] == 3


def test_processes_these_tests_start_see_no_gpu():
    """The integration tests are sealed from GPUs (conftest's cpu_only): on a 1-GPU host a 2-rank
    torchrun run would put rank 1 on cuda:1 and fail in set_device(1)."""
    code = "import os, torch; print(repr(os.environ['CUDA_VISIBLE_DEVICES']), torch.cuda.is_available())"
    r = subprocess.run([sys.executable, "-c", code], env=env(), capture_output=True, text=True, timeout=120)
    assert r.stdout.split() == ["''", "False"], r.stderr[-2000:]


@pytest.mark.parametrize("ask,extra_env", [("device=cuda", {}), ("precision=auto", {"ACCELERATE_MIXED_PRECISION": "bf16"}),
                                           ("precision=bf16", {"ACCELERATE_USE_DEEPSPEED": "true"})],
                         ids=["device-cuda", "gpu-launch-config", "deepspeed-launch"])
def test_a_run_that_asks_for_cuda_and_finds_none_fails_at_start(data, tmp_path, ask, extra_env):
    """No silent CPU run: exit 1, one line naming torch's CUDA build, the driver situation and the
    CUDA 12 wheel index; no traceback, nothing written."""
    cmd = [sys.executable, "-m", "awm", "train", "--config", "tiny-cpu", *overrides(data, tmp_path), ask]
    r = subprocess.run(cmd, env={**env(), "CUDA_VISIBLE_DEVICES": "", **extra_env}, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1, r.stderr[-2000:]
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "asks for a CUDA GPU but torch sees none" in lines[0], r.stderr
    assert f"CUDA {torch.version.cuda}" in lines[0] and "CUDA_VISIBLE_DEVICES hides every GPU" in lines[0]
    assert "https://download.pytorch.org/whl/cu126" in lines[0] and "Traceback" not in r.stderr
    assert not any(tmp_path.iterdir())

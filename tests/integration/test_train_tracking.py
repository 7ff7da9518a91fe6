"""Experiment tracking with the real components: a 2-process ``awm train`` against an MLflow
tracking server this test starts (config as params, per-step losses, the validation grid; the
TensorBoard files still written; a resumed run continues the same MLflow run), a 2-point sweep as
two runs of one experiment, W&B offline writing a run file whose history holds the losses, and a
tracker that cannot work failing at start in one line."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from sweep_runs import make_data as make_sweep_data  # noqa: E402
from sweep_runs import points, write_spec  # noqa: E402
from tracker_servers import free_port, mlflow_server, wandb_history, wandb_records  # noqa: E402
from train_runs import BIN, ROOT, env, make_data, tiny, torchrun  # noqa: E402

pytestmark = pytest.mark.slow
STEPS = 6


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_data(tmp_path_factory.mktemp("tracking_data"), [8])


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as uri:
        yield uri


def _client(uri: str):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri)


def _tb_scalars(tb: Path) -> tuple[dict[str, list[tuple[int, float]]], list[str]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}, acc.Tags()["images"]


def _train(args: list[str], processes: int = 2, **extra: str) -> subprocess.CompletedProcess:
    cmd = torchrun(free_port(), args) if processes == 2 else [str(BIN / "awm"), "train", *args]
    return subprocess.run(cmd, env=env(**extra), capture_output=True, text=True, timeout=600, cwd=ROOT)


def test_two_process_run_reaches_mlflow_and_a_resumed_run_continues_it(data, mlflow_uri, tmp_path):
    extra = {"MLFLOW_TRACKING_URI": mlflow_uri, "MLFLOW_EXPERIMENT_NAME": "awm-two-process"}
    run_dir = tmp_path / "tracked"
    r = _train(tiny(data, tmp_path, "tracked", steps=STEPS, **{"log.trackers": "[tensorboard,mlflow]"}), **extra)
    assert r.returncode == 0, r.stderr[-3000:]
    client = _client(mlflow_uri)
    experiment = client.get_experiment_by_name("awm-two-process")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    run_id = run.info.run_id
    assert run.info.run_name == "tracked"
    assert json.loads((run_dir / "trackers.json").read_text()) == {"mlflow": run_id}
    params = run.data.params
    assert params["steps"] == str(STEPS) and params["model.hparams.num_feat"] == "16"
    assert params["data.batch_size"] == "4" and json.loads(params["log.trackers"]) == ["tensorboard", "mlflow"]
    pixel = client.get_metric_history(run_id, "loss/pixel")
    assert [m.step for m in pixel] == list(range(1, STEPS + 1))
    for key in ("lr/g", "perf/samples_per_s", "perf/tflops", "val/psnr_y", "val/bicubic_psnr_y", "val/ssim_y"):
        assert key in run.data.metrics, key
    images = [a.path for a in client.list_artifacts(run_id, "images")]
    assert any(p.startswith(f"images/val_lr_bicubic_sr_hr+step+{STEPS}+") and p.endswith(".png") for p in images), images
    # TensorBoard still gets the same scalars (float32 there: equal to 1e-6 relative) and the grid
    tb, tb_images = _tb_scalars(run_dir / "tb")
    assert [s for s, _ in tb["loss/pixel"]] == list(range(1, STEPS + 1))
    for (_, a), m in zip(tb["loss/pixel"], pixel, strict=True):
        assert math.isclose(a, m.value, rel_tol=1e-6), (a, m.value)
    assert "val/lr_bicubic_sr_hr" in tb_images

    longer = STEPS + 3
    r = _train(tiny(data, tmp_path, "tracked", steps=longer, **{"log.trackers": "[tensorboard,mlflow]"}), **extra)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resumed from {run_dir / 'state'} at step {STEPS}" in r.stderr
    runs = client.search_runs([experiment.experiment_id])
    assert [x.info.run_id for x in runs] == [run_id]  # one run, one curve
    assert [m.step for m in client.get_metric_history(run_id, "loss/pixel")] == list(range(1, longer + 1))
    assert client.get_run(run_id).info.status == "FINISHED"


def test_sweep_points_are_runs_of_one_experiment(mlflow_uri, tmp_path):
    out = tmp_path / "sweep"
    spec = write_spec(tmp_path / "spec.yaml", make_sweep_data(tmp_path / "data"), out,
                      space={"loss.pixel.weight": [1.0, 0.5]}, overrides=("log.trackers=[mlflow]",))
    r = subprocess.run([str(BIN / "awm"), "sweep", str(spec)], env=env(MLFLOW_TRACKING_URI=mlflow_uri),
                       capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    ids = points(out)
    client = _client(mlflow_uri)
    experiment = client.get_experiment_by_name("tiny")  # the sweep's name
    runs = {x.info.run_name: x for x in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == sorted(ids)
    for pid, run in runs.items():
        assert float(run.data.params["sweep.delta.loss.pixel.weight"]) == ids[pid]["delta"]["loss.pixel.weight"]
        assert run.data.params["sweep.name"] == "tiny" and run.data.params["log.group"] == "tiny"
        m = run.data.metrics
        assert m["eval/psnry"] > 10 and 0 < m["eval/ssim"] <= 1, m
        assert m["cost/cpu_h"] > 0 and m["cost/tflop"] > 0 and m["cost/steps"] == 3, m
        assert len(client.get_metric_history(run.info.run_id, "loss/pixel")) >= 1


def test_wandb_offline_writes_a_run_file_holding_the_losses(data, tmp_path):
    wandb_dir = tmp_path / "wandb-dir"
    wandb_dir.mkdir()
    r = _train(tiny(data, tmp_path, "offline", steps=STEPS, **{"log.trackers": "[wandb]"}), processes=1,
               WANDB_MODE="offline", WANDB_DIR=str(wandb_dir), WANDB_PROJECT="awm-test")
    assert r.returncode == 0, r.stderr[-3000:]
    run_id = json.loads((tmp_path / "offline" / "trackers.json").read_text())["wandb"]
    files = list(wandb_dir.glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(files) == 1, list(wandb_dir.rglob("*"))
    history = wandb_history(files[0])
    losses = [(row["_step"], row["loss/pixel"]) for row in history if "loss/pixel" in row]
    assert [s for s, _ in losses] == list(range(1, STEPS + 1)) and all(v > 0 for _, v in losses)
    assert any("val/lr_bicubic_sr_hr/_type" in row for row in history)  # the grid, as a W&B image
    records = {r.WhichOneof("record_type"): r for r in wandb_records(files[0])}
    assert records["run"].run.display_name == "offline" and records["run"].run.project == "awm-test"
    config = {u.key: json.loads(u.value_json) for u in records["config"].config.update}
    assert config["steps"] == STEPS and config["model.hparams.num_feat"] == 16

    longer = STEPS + 3  # resumed: the same W&B run id, its history going on where it stopped
    r = _train(tiny(data, tmp_path, "offline", steps=longer, **{"log.trackers": "[wandb]"}), processes=1,
               WANDB_MODE="offline", WANDB_DIR=str(wandb_dir), WANDB_PROJECT="awm-test")
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((tmp_path / "offline" / "trackers.json").read_text())["wandb"] == run_id
    files = sorted(wandb_dir.glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(files) == 2, files  # each offline session a file; `wandb sync` uploads both into the run
    again = [row["_step"] for row in wandb_history(files[1]) if "loss/pixel" in row]
    assert again == list(range(STEPS + 1, longer + 1))


def test_a_tracker_that_cannot_work_fails_at_start_in_one_line(data, tmp_path):
    down = f"http://127.0.0.1:{free_port()}"
    r = _train(tiny(data, tmp_path, "down", steps=STEPS, **{"log.trackers": "[mlflow]"}), processes=1,
               MLFLOW_TRACKING_URI=down)
    assert r.returncode == 2, r.stderr[-3000:]
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("awm train: config key 'log.trackers'") and f"MLFLOW_TRACKING_URI={down}" in line, line
    assert "step 1/" not in r.stderr and not (tmp_path / "down" / "state").exists()
    # W&B online without credentials (no key, no netrc in this HOME)
    r = _train(tiny(data, tmp_path, "nokey", steps=STEPS, **{"log.trackers": "[wandb]"}), processes=1,
               WANDB_MODE="online", HOME=str(tmp_path), WANDB_API_KEY="")
    assert r.returncode == 2, r.stderr[-3000:]
    line = r.stderr.strip().splitlines()[-1]
    assert "config key 'log.trackers'" in line and "WANDB_MODE=offline" in line, line

"""``log.trackers`` and the tracker plumbing that needs no server: validation, flattened params,
and a resumed run reusing the tracker run ids its folder keeps."""

from __future__ import annotations

import json
import sys

import pytest

from awm.config import ConfigError
from awm.train import tracking
from awm.train.config import load_config


def test_trackers_default_and_validation():
    assert load_config("tiny-cpu").log.trackers == ["tensorboard"]
    assert load_config("tiny-cpu", ["log.trackers=[tensorboard,mlflow,wandb]"]).log.trackers == [
        "tensorboard", "mlflow", "wandb"]
    with pytest.raises(ConfigError) as e:
        load_config("tiny-cpu", ["log.trackers=[tensorboard,neptune]"])
    assert e.value.key == "log.trackers" and e.value.value == "neptune"
    assert e.value.valid == "tensorboard, wandb, mlflow"
    with pytest.raises(ConfigError, match="each tracker once"):
        load_config("tiny-cpu", ["log.trackers=[mlflow,mlflow]"])


def test_flatten_gives_scalar_dotted_params():
    flat = tracking.flatten({"optim": {"lr_g": 2e-4, "betas": [0.9, 0.99]}, "model": {"hparams": {}, "init": None},
                             "name": "r", "deterministic": True})
    assert flat == {"optim.lr_g": 2e-4, "optim.betas": "[0.9, 0.99]", "model.hparams": "{}", "model.init": "null",
                    "name": "r", "deterministic": True}


def test_resumed_run_reuses_the_kept_tracker_run_ids(tmp_path):
    cfg = load_config("tiny-cpu", [f"runs={tmp_path}", "name=r1", "log.trackers=[tensorboard,wandb,mlflow]",
                                   "log.group=sweep-a"])
    cfg.run_dir.mkdir()
    (cfg.run_dir / tracking.IDS_NAME).write_text(json.dumps({"wandb": "abc123de", "mlflow": "f" * 32}))
    tb, wb, ml = tracking.build(cfg, resuming=True)
    assert (tb.name, tb.run_name, tb.logging_dir_param) == ("tensorboard", "tb", cfg.run_dir)
    assert wb.init_kwargs["id"] == "abc123de" and wb.init_kwargs["resume"] == "allow"
    assert wb.init_kwargs["name"] == "r1" and wb.init_kwargs["group"] == "sweep-a"
    assert ml.run_id == "f" * 32 and ml.run_name == "r1" and ml.experiment_name == "sweep-a"
    _, wb, ml = tracking.build(cfg, resuming=False)  # started over: new tracker runs
    assert wb.init_kwargs["id"] != "abc123de" and ml.run_id is None


@pytest.mark.parametrize("absent", ["wandb", "mlflow"])
def test_a_tracker_whose_package_is_missing_fails_in_one_line_naming_the_extra(absent, monkeypatch):
    monkeypatch.setitem(sys.modules, absent, None)  # what importlib sees when the package is not installed
    with pytest.raises(ConfigError) as e:
        tracking.preflight(["tensorboard", absent])
    assert e.value.key == "log.trackers"
    assert f"missing: {absent} (pip install 'awm[track]')" in str(e.value) and "\n" not in str(e.value)

"""A re-run demo reuses its eval only when it holds every metric asked for now."""

import json
import os

from awm.demo import eval_reusable


def test_a_rerun_computes_a_metric_the_earlier_eval_lacks(tmp_path):
    run, summary = tmp_path / "run", tmp_path / "eval" / "summary.json"
    (run / "checkpoints" / "last").mkdir(parents=True)
    (run / "checkpoints" / "last" / "meta.json").write_text("{}")
    summary.parent.mkdir()
    summary.write_text(json.dumps({"metrics": {"psnry": {}, "ssim": {}, "niqe_anime": {}}}))
    os.utime(run / "checkpoints" / "last" / "meta.json", (1000, 1000))
    os.utime(summary, (2000, 2000))
    assert eval_reusable(summary, run, ["psnry", "ssim", "niqe_anime"])
    assert not eval_reusable(summary, run, ["psnry", "ssim", "niqe_anime", "niqe"])  # NIQE staged since
    os.utime(summary, (500, 500))  # older than the model: never reused
    assert not eval_reusable(summary, run, ["psnry"])

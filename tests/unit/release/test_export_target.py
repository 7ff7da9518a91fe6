"""`awm export --out` never replaces a user's work: only a missing or empty folder, or an earlier
release (its release.json), is written; a run folder, a folder of other files and the current
folder are refused in one line, with nothing written or removed."""

import hashlib
import json
import os
from pathlib import Path

import pytest

from awm import cli
from awm.models.archs import build_model
from awm.models.checkpoint import save_checkpoint
from awm.release.export import RELEASE_FILE


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A run folder as awm train leaves it: config, checkpoints, state, TensorBoard."""
    run = tmp_path_factory.mktemp("runs") / "t1"
    save_checkpoint(run / "checkpoints" / "last", build_model("compact-tiny", 2), "compact-tiny", {}, 2, 3)
    (run / "config.yaml").write_text("name: t1\n")
    (run / "state").mkdir()
    (run / "state" / "optimizer.bin").write_bytes(os.urandom(256))
    (run / "tb").mkdir()
    (run / "tb" / "events.out").write_bytes(b"tb")
    return run


def _export(model: Path, out: str | Path, capsys) -> tuple[int, str]:
    code = cli.main(["export", str(model), "--out", str(out), "--no-onnx", "--grid-image", str(model.parent /
                                                                                                 "lr.png")])
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def lr_image(run) -> Path:
    import numpy as np

    from awm.imageio import encode_image

    path = run.parent / "lr.png"
    path.write_bytes(encode_image(np.full((24, 24, 3), 128, np.uint8), "png"))
    return path


def _refused(code: int, err: str, folder: Path, why: str) -> None:
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert str(folder.resolve()) in err and why in err and "nothing written" in err


def test_a_training_run_as_out_is_refused_and_left_byte_identical(run, lr_image, capsys):
    other = run.parent / "t2"
    save_checkpoint(other / "checkpoints" / "last", build_model("compact-tiny", 2), "compact-tiny", {}, 2, 5)
    (other / "config.yaml").write_text("name: t2\n")
    before = _digests(other)
    code, err = _export(run, other, capsys)
    _refused(code, err, other, f"no {RELEASE_FILE}")
    assert _digests(other) == before
    assert not list(other.parent.glob(".t2.*"))  # no temporary folder left either


def test_a_folder_of_other_files_is_refused(run, lr_image, tmp_path, capsys):
    mine = tmp_path / "mystuff"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    code, err = _export(run, mine, capsys)
    _refused(code, err, mine, "notes.txt")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and (mine / "notes.txt").read_text() == "keep me"


def test_missing_and_empty_folders_are_written_and_an_earlier_release_is_replaced(run, lr_image, tmp_path, capsys):
    assert _export(run, tmp_path / "new" / "rel", capsys)[0] == 0
    first = json.loads((tmp_path / "new" / "rel" / RELEASE_FILE).read_text())
    (tmp_path / "new" / "rel" / "stale.txt").write_text("from an earlier release")
    assert _export(run, tmp_path / "new" / "rel", capsys)[0] == 0
    assert not (tmp_path / "new" / "rel" / "stale.txt").exists()
    assert json.loads((tmp_path / "new" / "rel" / RELEASE_FILE).read_text())["name"] == first["name"]
    (tmp_path / "empty").mkdir()
    assert _export(run, tmp_path / "empty", capsys)[0] == 0
    assert (tmp_path / "empty" / RELEASE_FILE).is_file()


def test_dot_and_relative_paths(run, lr_image, tmp_path, monkeypatch, capsys):
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    code, err = _export(run, ".", capsys)  # the current folder: refused cleanly, never a crash
    _refused(code, err, here, "current folder")
    assert list(here.iterdir()) == []
    (here / "keep.txt").write_text("x")
    code, err = _export(run, ".", capsys)
    _refused(code, err, here, "keep.txt")
    assert _export(run, "rel", capsys)[0] == 0  # relative: under the current folder
    assert (here / "rel" / RELEASE_FILE).is_file() and (here / "keep.txt").read_text() == "x"
    monkeypatch.chdir(here / "rel")
    code, err = _export(run, "..", capsys)  # holds the current folder (and other files)
    assert code == 2 and "nothing written" in err

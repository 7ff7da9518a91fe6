"""The package builds without setuptools warnings and carries its data files (recipes, profiles,
launch configs, the NIQE model): a warning per data file at every install hid real ones."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_builds_without_warnings_and_holds_the_data_files(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "awm", src / "awm", ignore=shutil.ignore_patterns("__pycache__"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation",
                        "--no-index", "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    said = r.stdout + r.stderr
    assert "is absent from the `packages` configuration" not in said, said[-3000:]
    with zipfile.ZipFile(next((tmp_path / "dist").glob("awm-*.whl"))) as whl:
        names = set(whl.namelist())
    for folder, files in (("awm/train/recipes", "*.yaml"), ("awm/cluster/profiles", "*.yaml"),
                          ("awm/assets", "niqe_anime.*"), ("awm/launch", "*.yaml")):
        expected = {p.relative_to(ROOT).as_posix() for p in (ROOT / folder).glob(files)}
        assert expected and expected <= names, (folder, sorted(expected - names))
    assert not any("__pycache__" in n for n in names)

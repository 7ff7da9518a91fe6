"""Launch configs ship as package data, resolve by name from any directory, and launch/ links to them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from awm import cli, launch

ROOT = Path(__file__).resolve().parents[2]


def test_top_level_launch_folder_holds_the_shipped_files():
    shipped = sorted(p.name for p in launch.HERE.iterdir() if p.suffix in (".yaml", ".json"))
    top = sorted(p.name for p in (ROOT / "launch").iterdir() if p.suffix in (".yaml", ".json"))
    assert top == shipped and "cpu-2proc.yaml" in shipped
    for name in shipped:
        assert (ROOT / "launch" / name).read_bytes() == (launch.HERE / name).read_bytes(), name


def test_names_resolve_from_any_directory_with_references_made_absolute(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    r = subprocess.run([sys.executable, "-m", "awm", "launch-config", "cpu-2proc"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert r.returncode == 0 and Path(r.stdout.strip()) == launch.HERE / "cpu-2proc.yaml"
    ds = launch.config_path("deepspeed-zero2.yaml")
    assert ds.parent == tmp_path / "cache" / "awm" / "launch"
    json_path = Path(yaml.safe_load(ds.read_text())["deepspeed_config"]["deepspeed_config_file"])
    assert json_path.is_absolute() and json_path == launch.HERE / "ds-zero2.json" and json_path.is_file()
    assert cli.main(["launch-config", "no-such"]) == 2

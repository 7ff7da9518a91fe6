"""awm.sweep.spec: points from optuna's samplers, stable ids, specs refused before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from awm import cli
from awm.config import from_dict
from awm.errors import ConfigError
from awm.sweep.spec import Point, SweepSpec, load_spec, point_config, points
from awm.sweep.sweep import prepare


def spec(**search) -> SweepSpec:
    return from_dict(SweepSpec, {"name": "t", "search": search})


def write(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc))
    return path


def test_grid_is_every_combination_with_ids_from_the_delta_alone():
    grid = points(spec(space={"loss.pixel.weight": [1.0, 0.5], "data.limit": [2, 8]}))
    assert sorted((p.delta["loss.pixel.weight"], p.delta["data.limit"]) for p in grid) == [
        (0.5, 2), (0.5, 8), (1.0, 2), (1.0, 8)]
    assert len({p.id for p in grid}) == 4
    swapped = points(spec(space={"data.limit": [8, 2], "loss.pixel.weight": [0.5, 1.0]}))
    assert {p.id for p in swapped} == {p.id for p in grid}  # neither key nor value order matters
    grown = points(spec(space={"loss.pixel.weight": [1.0, 0.5], "data.limit": [2, 8, 32]}))
    assert {p.id for p in grid} < {p.id for p in grown}  # a finished point keeps its run folder


def test_grid_budget_takes_a_seeded_subset():
    space = {"optim.lr_g": [1e-4, 2e-4, 5e-4], "data.limit": [2, 8]}
    a, b = points(spec(space=space, trials=3, seed=1)), points(spec(space=space, trials=3, seed=1))
    assert len(a) == 3 and [p.id for p in a] == [p.id for p in b]


def test_random_search_draws_the_budget_within_the_ranges_reproducibly():
    space = {"optim.lr_g": {"low": 1e-4, "high": 1e-2, "log": True},
             "model.hparams.num_conv": {"low": 4, "high": 16, "step": 4},
             "loss.pixel.type": ["l1", "charbonnier"]}
    a = points(spec(sampler="random", space=space, trials=6, seed=3))
    assert [p.delta for p in a] == [p.delta for p in points(spec(sampler="random", space=space, trials=6, seed=3))]
    assert [p.delta for p in a] != [p.delta for p in points(spec(sampler="random", space=space, trials=6, seed=4))]
    for p in a:
        d = p.delta
        assert 1e-4 <= d["optim.lr_g"] <= 1e-2 and isinstance(d["optim.lr_g"], float)
        assert d["model.hparams.num_conv"] in (4, 8, 12, 16) and d["loss.pixel.type"] in ("l1", "charbonnier")


def test_point_values_reach_the_train_config_unchanged(tmp_path):
    p = Point({"optim.lr_g": 0.000123456789, "loss.pixel.type": "charbonnier", "data.augment": False,
               "data.limit": 7, "data.degrade": None})
    cfg = point_config(spec(space={"data.limit": [7]}), p, tmp_path)
    assert (cfg.optim.lr_g, cfg.loss.pixel.type, cfg.data.augment, cfg.data.limit, cfg.data.degrade) == (
        0.000123456789, "charbonnier", False, 7, None)
    assert cfg.run_dir == tmp_path / "runs" / p.id


@pytest.mark.parametrize("search, key", [
    ({"space": {"optim.lr_g": {"low": 1e-4, "high": 1e-3}}}, "search.space.optim.lr_g"),  # a range in a grid
    ({"sampler": "random", "space": {"data.limit": [2]}}, "search.trials"),  # random search needs its budget
    ({"space": {"name": ["a", "b"]}}, "search.space.name"),  # the sweep names the runs itself
    ({"space": {"optim.lr_g": {"low": 0, "high": 1e-3, "log": True}}, "sampler": "random", "trials": 2},
     "search.space.optim.lr_g"),
    ({"space": {}}, "search.space"),
])
def test_bad_search_specs_name_the_key(search, key):
    with pytest.raises(ConfigError) as e:
        spec(**search)
    assert e.value.key == key


def test_every_point_is_checked_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path / "s.yaml", {"search": {"space": {"optim.lr_g": [1e-4, -1.0]}}})
    with pytest.raises(ConfigError, match=r"point p[0-9a-f]{8} \(optim.lr_g=-1.0\)"):
        load_spec(path)
    path = write(tmp_path / "s.yaml", {"search": {"space": {"optim.lr_typo": [1e-4]}}})
    assert cli.main(["sweep", str(path)]) == 2  # a usage error, before any folder is made
    assert not (tmp_path / "sweeps").exists()


def test_a_folder_keeps_its_train_and_eval_parts_but_may_grow_its_space(tmp_path):
    base = {"out": str(tmp_path / "sw"), "train": {"overrides": ["steps=3"]},
            "search": {"space": {"data.limit": [2, 8]}}}
    first = prepare(from_dict(SweepSpec, base))
    grown = prepare(from_dict(SweepSpec, {**base, "search": {"space": {"data.limit": [2, 8, 32]}}}))
    assert {p.id for p in first.points} < {p.id for p in grown.points}
    with pytest.raises(ConfigError, match="train differ"):
        prepare(from_dict(SweepSpec, {**base, "train": {"overrides": ["steps=4"]}}))


def test_the_readme_spec_is_a_valid_sweep(tmp_path):
    text = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    section = text[text.index("### 7. Sweeps"):]
    block = section[section.index("```yaml\n") + 8:section.index("```", section.index("```yaml\n") + 8)]
    spec = load_spec(write(tmp_path / "sweep.yaml", yaml.safe_load(block)))  # every point's config builds
    assert len(points(spec)) == 8 and spec.processes == 8 and spec.quality == "psnry"

"""awm weights: stage (sha256-checked) into the caches pyiqa/torchvision/timm read, verify, fast checks."""

from __future__ import annotations

import hashlib

import pytest

from awm.config import ConfigError
from awm.eval import metrics, weights


@pytest.fixture()
def caches(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path


def _entry(filename: str, data: bytes, cache: str = "pyiqa", prefix: bool = False, full: bool = False):
    digest = hashlib.sha256(data).hexdigest()
    return weights.WeightFile(filename, cache, "https://example.invalid/" + filename,
                              sha256=digest if full else None, sha256_prefix=digest[:8] if prefix else None,
                              used_by=("m",))


def test_stage_and_verify(caches) -> None:
    src = caches / "downloads" / "sub"
    src.mkdir(parents=True)
    good, bad = b"weights-a", b"weights-b"
    (src / "a.pth").write_bytes(good)
    (src / "b-00000000.pth").write_bytes(bad)
    (src / "model.safetensors").write_bytes(good)
    entries = (_entry("a.pth", good, full=True),
               weights.WeightFile("b-00000000.pth", "torchvision", "u", sha256_prefix="00000000"),
               _entry("model.safetensors", good, cache="hf:timm/sub"),
               _entry("absent.mat", b""))
    rows = {r["file"]: r for r in weights.stage(caches / "downloads", entries)}
    assert rows["a.pth"]["status"] == "staged"
    assert rows["b-00000000.pth"]["status"] == "refused" and "sha256" in rows["b-00000000.pth"]["reason"]
    assert "absent.mat" not in rows
    assert (caches / "torch" / "hub" / "pyiqa" / "a.pth").read_bytes() == good
    assert not (caches / "torch" / "hub" / "checkpoints" / "b-00000000.pth").exists()
    hf = caches / "hf" / "models--timm--sub"
    rev = (hf / "refs" / "main").read_text()
    assert (hf / "snapshots" / rev / "model.safetensors").read_bytes() == good

    status = {r["file"]: r["status"] for r in weights.verify(entries)}
    assert status == {"a.pth": "present", "b-00000000.pth": "missing", "model.safetensors": "present",
                      "absent.mat": "missing"}
    (caches / "torch" / "hub" / "pyiqa" / "a.pth").write_bytes(b"corrupted")
    assert weights.verify(entries)[0]["status"] == "mismatch"


def test_registry_locations_follow_library_caches(caches) -> None:
    by_name = {w.filename: w for w in weights.registry()}
    hub = caches / "torch" / "hub"
    assert weights.location(by_name["niqe_modelparameters.mat"]) == hub / "pyiqa" / "niqe_modelparameters.mat"
    assert weights.location(by_name["vgg19-dcbb9e9d.pth"]) == hub / "checkpoints" / "vgg19-dcbb9e9d.pth"
    assert weights.location(by_name["RN50.pt"]) == hub / "clip" / "RN50.pt"
    assert by_name["vgg16-397923af.pth"].sha256_prefix == "397923af"
    assert {w.filename for w in weights.for_metric("dists")} == {"DISTS_weights-f5e65c96.pth", "vgg16-397923af.pth"}


def test_check_names_and_weights(caches) -> None:
    metrics.check(["psnry", "ssim", "piqe", "niqe_anime"])
    with pytest.raises(ConfigError, match="'metrics': got 'psnr_typo'"):  # a usage error: exit 2
        metrics.check(["psnr_typo"])
    with pytest.raises(metrics.MissingWeightsError, match="DISTS_weights-f5e65c96.pth.*re-run with --download"):
        metrics.check(["psnry", "dists"])
    with pytest.raises(metrics.MissingWeightsError, match="not in awm's registry"):
        metrics.check(["nima"])
    metrics.check(["dists", "nima"], allow_download=True)
    dst = caches / "torch" / "hub" / "pyiqa" / "niqe_modelparameters.mat"
    dst.parent.mkdir(parents=True)
    dst.write_bytes(b"x")
    metrics.check(["niqe"])


def test_files_without_a_known_digest_are_exactly_pyiqas_timms_and_danbooru(caches) -> None:
    """The README names these as unchecked: keep the claim and the registry in step."""
    unchecked = {w.key for w in weights.registry() if not (w.sha256 or w.sha256_prefix)}
    assert unchecked == {w.key for w in weights.registry() if w.cache == "pyiqa" or w.cache.startswith("hf:timm/")
                         or "danbooru-pretrained" in w.url}
    assert all(w.sha256_prefix for w in weights.registry() if w.url.startswith("https://download.pytorch.org/"))
    src = caches / "downloads"
    src.mkdir()
    (src / "niqe_modelparameters.mat").write_bytes(b"params")
    niqe = next(w for w in weights.registry() if w.filename == "niqe_modelparameters.mat")
    [row] = weights.stage(src, (niqe,))
    assert row["status"] == "staged" and row["reason"] == "no published sha256: copied unchecked"
    assert next(r for r in weights.verify((niqe,)))["checksum"] == "none"

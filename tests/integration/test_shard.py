import io as _io
import json
import struct
import zlib
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from awm import cli, imageio, shardwrite
from awm.data.degrade import apply_params, encode_lr
from awm.data.synth import generate
from awm.shardio.read import iter_tar

SIZES = [(96, 64), (90, 70), (64, 96), (128, 72), (100, 100)]


def _png(img: np.ndarray) -> bytes:
    return imageio.encode_image(img, "png")


def _run(*args) -> int:
    return cli.main(["shard", *map(str, args)])


def _tars(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.glob("*.tar"))}


def _samples(d: Path) -> list[dict]:
    return [s for p in shardwrite.list_shards(d) for s in iter_tar(p)]


def _decode(data: bytes) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("good")
    for i, (w, h) in enumerate(SIZES):
        (d / f"img.{i}.png").write_bytes(_png(generate(i, w, h)))  # dots in stems: ids sanitised
    (d / "photo.jpg").write_bytes(imageio.encode_image(generate(9, 80, 60), "jpg", 92))
    return d


def test_reruns_workers_and_parts_give_identical_bytes(good, tmp_path):
    common = ["--in", good, "--shard-size", 2, "--split", "eval"]
    a = tmp_path / "a"
    assert _run(*common, "--out", a) == 0
    first = _tars(a)
    assert list(first) == ["eval-000000.tar", "eval-000001.tar", "eval-000002.tar"]
    mtimes = {p: p.stat().st_mtime_ns for p in a.glob("*.tar")}
    assert _run(*common, "--out", a) == 0  # finished shards are skipped, not rewritten
    assert {p: p.stat().st_mtime_ns for p in a.glob("*.tar")} == mtimes
    b, c = tmp_path / "b", tmp_path / "c"
    assert _run(*common, "--out", b, "--workers", 2, "--mp-start", "spawn") == 0  # spawn-safe
    assert _tars(b) == first
    assert _run(*common, "--out", c, "--part", "1/2") == 0
    assert list(_tars(c)) == ["eval-000001.tar"]
    assert _run(*common, "--out", c, "--part", "0/2", "--workers", 2) == 0
    assert _tars(c) == first
    assert json.loads((c / "index.json").read_text()) == json.loads((a / "index.json").read_text())
    assert (a / "shard_config.yaml").read_text() == (c / "shard_config.yaml").read_text()


def test_sample_layout_sizes_original_hr_bytes_and_replay(good, tmp_path):
    out = tmp_path / "o"
    assert _run("--in", good, "--out", out, "--split", "eval") == 0
    index = json.loads((out / "index.json").read_text())
    assert (index["nsamples"], index["split"], index["scales"], index["preset"]) == (6, "eval", [2, 4], "seed")
    by_id = {s["__key__"]: s for s in _samples(out)}
    assert sorted(by_id) == ["img_0", "img_1", "img_2", "img_3", "img_4", "photo"]
    for key, s in by_id.items():
        assert json.loads(s["json"])["id"] == key
        assert set(s) - {"__url__", "__key__"} == {"hr.png", "lr_x2.jpg", "lr_x4.jpg", "json"}
        meta = json.loads(s["json"])
        hr = _decode(s["hr.png"])
        w, h = meta["hr_size"]
        assert hr.shape == (h, w, 3) and w % 4 == 0 and h % 4 == 0 and meta["tile"] is None
        for scale in (2, 4):
            params = meta["params"][f"x{scale}"]
            lr = apply_params(hr, scale, params)
            assert _decode(s[f"lr_x{scale}.jpg"]).shape == (h // scale, w // scale, 3)
            assert encode_lr(lr, params) == s[f"lr_x{scale}.jpg"]  # the json reproduces the stored LR
    assert by_id["img_0"]["hr.png"] == (good / "img.0.png").read_bytes()  # 96x64 PNG: bytes kept
    assert json.loads(by_id["img_1"]["json"])["src_size"] == [90, 70]
    assert json.loads(by_id["img_1"]["json"])["hr_size"] == [88, 68]
    assert np.array_equal(_decode(by_id["img_1"]["hr.png"]), imageio.read_image(good / "img.1.png")[:68, :88])
    stats = json.loads((out / "eval-000000_stats.json").read_text())
    assert stats["notes"] == {"hr_encoded": 2, "hr_original_bytes": 4} and stats["nskipped"] == 0


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def _bad_corpus(d: Path) -> dict[str, str]:
    """Writes good, convertible and bad files; returns {id: expected skip reason} for the bad ones."""
    d.mkdir()
    img = generate(3, 96, 64)
    png, jpg = _png(img), imageio.encode_image(img, "jpg", 90)
    (d / "good1.png").write_bytes(png)
    (d / "good2.jpg").write_bytes(jpg)
    (d / "deep16.png").write_bytes(_png(img.astype(np.uint16) * 257))
    (d / "gray.png").write_bytes(_png(img[..., 1]))
    (d / "rgba.png").write_bytes(_png(generate(4, 64, 64, alpha=True)))
    cmyk = _io.BytesIO()
    Image.new("CMYK", (64, 64), (10, 200, 30, 0)).save(cmyk, "JPEG")
    bomb = (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + _chunk(b"IEND", b""))
    bad = {"trunc_png.png": (png[: len(png) // 2], "truncated"),
           "trunc_jpg.jpg": (jpg[: len(jpg) // 2], "truncated"),
           "zero.png": (b"", "empty_file"),
           "html.jpg": (b"<html>503 Service Unavailable</html>", "not_an_image"),
           "one.png": (_png(np.zeros((1, 1, 3), np.uint8)), "too_small"),
           "tiny.png": (_png(img[:12, :20]), "too_small"),
           "under_tile.png": (_png(img[:40, :40]), "smaller_than_tile"),
           "cmyk.jpg": (cmyk.getvalue(), "cmyk_jpeg"),
           "bomb.png": (bomb, "too_many_pixels")}
    for name, (data, _) in bad.items():
        (d / name).write_bytes(data)
    return {Path(name).stem: reason for name, (_, reason) in bad.items()}


def test_bad_input_corpus_is_counted_not_fatal(tmp_path):
    expected = _bad_corpus(tmp_path / "src")
    out = tmp_path / "out"
    assert _run("--in", tmp_path / "src", "--out", out, "--tile", 48, "--lr-format", "png") == 0
    stats = [json.loads(p.read_text()) for p in sorted(out.glob("*_stats.json"))]
    got = {Path(i).stem: reason for st in stats for reason, ids in st["skipped_names"].items() for i in ids}
    assert got == expected
    index = json.loads((out / "index.json").read_text())
    assert {Path(i).stem: r for r, ids in index["skipped_names"].items() for i in ids} == expected
    assert sum(index["skipped"].values()) == len(expected) and index["tile"] == 48
    notes = sum((Counter(st["notes"]) for st in stats), Counter())
    assert (notes["16bit"], notes["gray"], notes["alpha_on_white"]) == (1, 1, 1)
    samples = _samples(out)
    ids = {json.loads(s["json"])["id"] for s in samples}
    assert ids == {"good1", "good2", "deep16", "gray", "rgba"}
    for s in samples:
        meta = json.loads(s["json"])
        assert s["__key__"].startswith(meta["id"] + "_t") and meta["hr_size"] == [48, 48]
        assert _decode(s["lr_x4.png"]).shape == (12, 12, 3)
    gray = next(s for s in samples if s["__key__"] == "gray_t0")
    hr = _decode(gray["hr.png"])
    assert np.array_equal(hr[..., 0], hr[..., 2])


def test_tiles_are_crops_of_the_whole_image_degradation(good, tmp_path):
    out = tmp_path / "t"
    assert _run("--in", good, "--out", out, "--tile", 32, "--lr-format", "png", "--preset", "realesrgan") == 0
    tiles = [s for s in _samples(out) if s["__key__"].startswith("img_1_t")]
    src = imageio.read_image(good / "img.1.png")[:68, :88]  # 90x70 cropped to a multiple of 4
    assert len(tiles) == 3 * 3
    lr_full = {}
    for s in tiles:
        meta = json.loads(s["json"])
        x, y, w, h = meta["tile"]
        assert np.array_equal(_decode(s["hr.png"]), src[y:y + h, x:x + w])
        for scale in (2, 4):
            if scale not in lr_full:
                lr_full[scale] = apply_params(src, scale, meta["params"][f"x{scale}"])
            want = lr_full[scale][y // scale:(y + h) // scale, x // scale:(x + w) // scale]
            assert np.array_equal(_decode(s[f"lr_x{scale}.png"]), want)


def test_hr_only_tiles_hold_hr_and_json_and_train_with_a_preset(good, tmp_path):
    from awm.data.loader import DataConfig, check_data

    out = tmp_path / "hr"
    assert _run("--in", good, "--out", out, "--tile", 32, "--hr-only") == 0
    tiles = [s for s in _samples(out) if s["__key__"].startswith("img_1_t")]
    src = imageio.read_image(good / "img.1.png")[:68, :88]
    assert len(tiles) == 3 * 3 and all(set(s) == {"__key__", "__url__", "hr.png", "json"} for s in tiles)
    meta = json.loads(tiles[4]["json"])
    x, y, w, h = meta["tile"]
    assert np.array_equal(_decode(tiles[4]["hr.png"]), src[y:y + h, x:x + w])
    assert meta["scales"] == [] and meta["preset"] is None and meta["params"] == {}
    index = json.loads((out / "index.json").read_text())
    assert index["hr_only"] is True and index["scales"] == []
    check_data(DataConfig(train=str(out), scale=2, patch=32, degrade="realesrgan"))


def test_raw_shard_input(tmp_path):
    raw = tmp_path / "raw"
    a, b = generate(11, 96, 64), generate(12, 80, 60)
    s0 = [{"__key__": "101", "png": _png(a), "json": {"id": 101}},
          {"__key__": "102", "jpg": imageio.encode_image(b, "jpg", 95), "json": {"id": 102}},
          {"__key__": "103", "json": {"id": 103, "note": "metadata only"}}]
    s1 = [{"__key__": "104", "webp": imageio.encode_image(b, "webp", 90)},
          {"__key__": "101", "png": _png(b)}]
    shardwrite.write_shard(raw / "raw-000000.tar", s0, shardwrite.ShardStats("raw-000000.tar"))
    shardwrite.write_shard(raw / "raw-000001.tar", s1, shardwrite.ShardStats("raw-000001.tar"))
    out = tmp_path / "out"
    assert _run("--in", raw, "--out", out, "--split", "eval", "--scales", "2") == 0
    index = json.loads((out / "index.json").read_text())
    assert index["nsamples"] == 3 and index["skipped"] == {"duplicate_id": 1, "no_image": 1}
    by_id = {s["__key__"]: s for s in _samples(out)}
    assert sorted(by_id) == ["101", "102", "104"] and set(by_id["104"]) >= {"hr.png", "lr_x2.jpg"}
    assert by_id["101"]["hr.png"] == s0[0]["png"]
    assert json.loads(by_id["102"]["json"])["source"] == "raw-000000.tar/102.jpg"


def test_resume_after_partial_shard_and_stale_temp_file(good, tmp_path):
    out = tmp_path / "r"
    common = ["--in", good, "--out", out, "--shard-size", 2]
    assert _run(*common) == 0
    before = _tars(out)
    keep = out / "train-000000.tar"
    mtime = keep.stat().st_mtime_ns
    partial = out / "train-000001.tar"
    partial.write_bytes(before[partial.name][:1000])  # a tar cut short, its stats file gone
    shardwrite.stats_path(partial).unlink()
    (out / "train-000002.tar").unlink()
    shardwrite.stats_path(out / "train-000002.tar").unlink()
    (out / ".train-000002.tar.x1y2.tmp").write_bytes(b"half a shard")
    assert _run(*common) == 0
    assert _tars(out) == before and keep.stat().st_mtime_ns == mtime
    assert not list(out.glob(".*.tmp"))
    assert json.loads((out / "index.json").read_text())["nsamples"] == 6


def test_output_folder_refuses_other_settings(good, tmp_path):
    out = tmp_path / "x"
    assert _run("--in", good, "--out", out, "--shard-size", 3) == 0
    assert _run("--in", good, "--out", out, "--shard-size", 3, "--preset", "realesrgan") == 2
    assert _run("--in", good, "--out", out, "--split", "eval", "--tile", 64) == 2



def test_no_sample_written_exits_1(tmp_path):
    import subprocess
    import sys

    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    for k in range(3):
        (src / f"noise{k}.png").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    r = subprocess.run([sys.executable, "-m", "awm", "shard", "--in", str(src), "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr
    assert "no sample written (skipped: {'not_an_image': 3})" in r.stderr


@pytest.mark.parametrize("case", ["empty", "texts", "pairs"])
def test_no_sources_exits_1_naming_what_is_there_and_writes_nothing(case, tmp_path):
    import logging

    src = tmp_path / "src"
    src.mkdir()
    if case == "texts":
        (src / "a.txt").write_text("no image")
    if case == "pairs":
        (src / "train-000000.tar").write_bytes(b"")
    lines: list[str] = []
    h = logging.Handler()
    h.emit = lambda record: lines.append(record.getMessage())
    logging.getLogger("awm.cli").addHandler(h)
    try:
        assert _run("--in", src, "--out", tmp_path / "out") == 1
    finally:
        logging.getLogger("awm.cli").removeHandler(h)
    what = {"empty": "(empty)", "texts": "(1 other file(s): {'.txt': 1})",
            "pairs": "(1 other file(s): {'.tar': 1}); its train-/eval-*.tar are pair shards (awm shard's output): "
                     "give raw shards or images"}[case]
    assert lines == [f"shard failed: ValueError: no sources at {src}: no raw-*.tar shard and no image file {what} "
                     "(re-run with --debug for a traceback)"]
    assert not (tmp_path / "out").exists()


def test_an_unexpected_error_on_one_source_exits_1(tmp_path):
    """A source that fails outside the expected skip reasons (here: its file vanished after
    listing) is recorded as error_<Exception> with its id, and the run reports a failure."""
    from dataclasses import asdict

    from awm import config
    from awm.data.shard import ShardConfig, Source, failure, make_shard

    good = tmp_path / "good.png"
    good.write_bytes(_png(generate(1, 64, 64)))
    cfg = ShardConfig(inp=tmp_path, out=tmp_path / "out")
    items = [asdict(Source("good", "good.png", str(good))), asdict(Source("gone", "gone.png", str(tmp_path / "x")))]
    stats = make_shard({"cfg": config.to_dict(cfg), "shard": 0, "items": items})
    assert stats["skipped_names"] == {"error_FileNotFoundError": ["gone.png"]} and stats["nsamples"] == 1
    why = failure({"expected_shards": 1, "part": {"shards": 1, **stats}})
    assert why is not None and "error_FileNotFoundError" in why
    ok = {"shards": 1, "nsamples": 1, "skipped": {"too_small": 2}}
    assert failure({"expected_shards": 1, "part": ok}) is None  # expected skips: exit 0
    assert failure({"expected_shards": 2, "part": {"shards": 0, "nsamples": 0, "skipped": {}}}) is None


def test_sources_smaller_than_the_tile_are_kept_whole_down_to_the_training_patch(tmp_path):
    """--tile 256 on wallpapers of 240 or 120 px: training crops 64 px patches, so they are kept (whole
    on their short side, tiled on the long one); only one below --tile-min is skipped."""
    src = tmp_path / "src"
    src.mkdir()
    img = generate(5, 400, 240)
    (src / "wide.png").write_bytes(_png(img))  # 400x240: two 256x240 tiles
    (src / "small.png").write_bytes(_png(img[:120, :160]))  # 160x120: one tile, the whole image
    (src / "under.png").write_bytes(_png(img[:48, :160]))  # 48 px < --tile-min 64: skipped
    out = tmp_path / "out"
    assert _run("--in", src, "--out", out, "--tile", 256, "--lr-format", "png") == 0
    got = {s["__key__"]: json.loads(s["json"]) for s in _samples(out)}
    assert {k: m["tile"] for k, m in got.items()} == {"wide_t0": [0, 0, 256, 240], "wide_t1": [144, 0, 256, 240],
                                                      "small_t0": [0, 0, 160, 120]}
    assert json.loads((out / "index.json").read_text())["skipped_names"] == {"smaller_than_tile": ["under.png"]}

"""`awm ingest` on a real folder with good, broken, duplicate and oversized files."""

import hashlib
import json
import sys
from collections import Counter
from pathlib import Path

from awm.acquire.ingest import stable_id
from awm.cli import main
from awm.data.synth import generate
from awm.imageio import encode_image
from awm.shardio.read import iter_tar
from awm.shardwrite import list_shards, read_index

sys.path.insert(0, str(Path(__file__).parent))
from booru_server import bomb_png, png  # noqa: E402


def make_src(src: Path) -> tuple[dict[str, bytes], Counter]:
    """Files to keep {relative name: bytes} and the expected skip counts."""
    (src / "sub").mkdir(parents=True)
    keep = {"a.png": png(1), "b.jpg": encode_image(generate(2, 80, 50), "jpg", 90),
            "sub/c.PNG": png(3), "sub/d.jpeg": encode_image(generate(4, 64, 64), "jpg", 90),
            "e.png": png(5)}
    for name, data in keep.items():
        (src / name).write_bytes(data)
    full = png(9)
    junk = {"notes.txt": b"hello", "anim.gif": b"GIF89a....", "challenge.png": b"<html>no</html>",
            "empty.jpg": b"", "half.png": full[:len(full) // 2], "bomb.png": bomb_png(),
            "tiny.png": png(6, 30, 20), "pic.webp": encode_image(generate(7, 64, 64), "webp"),
            "sub/copy-of-a.png": keep["a.png"],
            "z-near-b.jpg": encode_image(generate(2, 80, 50), "jpg", 70)}
    for name, data in junk.items():
        (src / name).write_bytes(data)
    skips = Counter({"unsupported_type": 3, "not_an_image": 1, "empty_file": 1, "truncated": 1,
                     "too_many_pixels": 1, "too_small": 1, "duplicate_md5": 1, "near_duplicate": 1})
    return keep, skips


def samples(out: Path) -> dict[int, dict]:
    return {int(s["__key__"]): s for p in list_shards(out, "raw-") for s in iter_tar(p)}


def test_ingest_folder(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    keep, skips = make_src(src)
    args = ["ingest", str(src), "--out", str(out), "--shard-size", "2", "--min-side", "40", "--no-progress"]
    assert main(args) == 0
    got = samples(out)
    by_id = {stable_id(hashlib.md5(d).hexdigest()): name for name, d in keep.items()}
    assert set(got) == set(by_id)
    for sid, s in got.items():
        meta = json.loads(s["json"])
        ext = "jpg" if by_id[sid].lower().endswith((".jpg", ".jpeg")) else "png"
        assert s[ext] == keep[by_id[sid]] and meta["file_name"] == by_id[sid] and meta["id"] == sid
    index = read_index(out)
    assert index["nsamples"] == len(keep) and index["nshards"] == 3
    assert index["skipped"] == dict(skips) == index["ingest"]["skipped"]

    shards_before = {p.name: p.read_bytes() for p in list_shards(out, "raw-")}
    assert main(args) == 0  # same folder, same bytes
    assert {p.name: p.read_bytes() for p in list_shards(out, "raw-")} == shards_before

    (src / "a.png").rename(src / "renamed.png")  # ids follow content, not names
    for name in ("b.jpg", "sub/c.PNG", "sub/d.jpeg", "z-near-b.jpg"):
        (src / name).unlink()
    assert main(args) == 0
    got = samples(out)
    assert set(got) == {stable_id(hashlib.md5(keep[n]).hexdigest()) for n in ("a.png", "e.png")}
    assert read_index(out)["nshards"] == 1 and len(list_shards(out, "raw-")) == 1  # stale ones removed


def test_ingest_bad_arguments(tmp_path):
    assert main(["ingest", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    (tmp_path / "crawl").mkdir()
    (tmp_path / "crawl" / "crawl_state-0of1.sqlite").write_bytes(b"")
    assert main(["ingest", str(tmp_path), "--out", str(tmp_path / "crawl")]) == 2


def _said(logger: str, run) -> tuple[int, list[str]]:
    """``run()``'s return value and what it logged on ``logger`` (AWM's handler writes to the real stderr)."""
    import logging

    lines: list[str] = []
    h = logging.Handler()
    h.emit = lambda record: lines.append(record.getMessage())
    logging.getLogger(logger).addHandler(h)
    try:
        return run(), lines
    finally:
        logging.getLogger(logger).removeHandler(h)


def test_nothing_kept_exits_1_naming_counts_and_writes_no_index(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for k in range(3):
        (src / f"noise{k}.png").write_bytes(bytes(range(256)) * (k + 1))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "index.json").write_text("{}")  # an earlier run's: must not survive as if complete
    rc, said = _said("awm.ingest", lambda: main(["ingest", str(src), "--out", str(tmp_path / "out"), "--no-progress"]))
    assert rc == 1
    assert f"ingest: no image kept from {src} (3 files; skipped: {{'not_an_image': 3}})" in said
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []


def test_an_empty_folder_exits_1_writing_nothing(tmp_path):
    (tmp_path / "src").mkdir()
    rc, said = _said("awm.cli", lambda: main(["ingest", str(tmp_path / "src"), "--out", str(tmp_path / "out")]))
    assert rc == 1 and said == [f"ingest failed: ValueError: {tmp_path / 'src'}: no files to ingest (empty folder) "
                                "(re-run with --debug for a traceback)"]
    assert not (tmp_path / "out").exists()


def test_a_folder_without_images_leaves_no_output_folder(tmp_path):
    """Only a .txt: exit 1 naming the skip, and no empty --out left behind to be mistaken for a result."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "notes.txt").write_text("no picture here")
    rc, said = _said("awm.ingest", lambda: main(["ingest", str(tmp_path / "src"), "--out", str(tmp_path / "out"),
                                                 "--no-progress"]))
    assert rc == 1 and any("skipped: {'unsupported_type': 1}" in m for m in said), said
    assert not (tmp_path / "out").exists()


def test_bmp_and_tiff_go_through_split_ingest_and_shard_alike(tmp_path):
    """One format list (awm.imageio.IMAGE_FORMATS): what shard and upscale read, split and ingest keep."""
    import cv2

    src = tmp_path / "src"
    src.mkdir()
    for i, ext in enumerate((".bmp", ".tif", ".png")):
        ok, buf = cv2.imencode(ext, generate(40 + i, 96, 64))
        (src / f"p{i}{ext}").write_bytes(buf.tobytes())
    assert main(["split", str(src), "--out", str(tmp_path / "split"), "--eval-fraction", "0.3", "--near-dup", "-1",
                 "--no-progress"]) == 0
    assert sorted(json.loads((tmp_path / "split" / "split.json").read_text())["files"]) == ["p0.bmp", "p1.tif", "p2.png"]
    assert main(["ingest", str(src), "--out", str(tmp_path / "raw"), "--no-progress"]) == 0
    assert sorted(next(k for k in s if not k.startswith("__") and k != "json") for s in samples(tmp_path / "raw").values()) == [
        "bmp", "png", "tiff"]
    assert main(["shard", "--in", str(tmp_path / "raw"), "--out", str(tmp_path / "pairs"), "scales=[2]",
                 "--no-progress"]) == 0
    assert read_index(tmp_path / "pairs")["nsamples"] == 3
    pairs = [json.loads(s["json"]) for p in list_shards(tmp_path / "pairs", "train-") for s in iter_tar(p)]
    assert sorted(m["name"] for m in pairs) == ["p0.bmp", "p1.tif", "p2.png"]  # the files' names, not 64-bit ids

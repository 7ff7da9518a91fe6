"""Of a picture and its smaller JPEG re-encode, ingest, split and the merge keep the original,
whatever the files are called (the first path in sorted order used to win)."""

import json

import cv2
import pytest

from awm.acquire import clean, merge
from awm.cli import main
from awm.data.synth import generate
from awm.imageio import encode_image
from awm.shardio import iter_tar
from awm.shardwrite import list_shards


def _pair(src, png_name: str, jpg_name: str) -> None:
    """A 400x279 PNG and a 300x209 JPEG q90 resize of it (the issue's pair)."""
    img = generate(3, 400, 279)
    assert img.shape[:2] == (279, 400)
    small = cv2.resize(img, (300, 209), interpolation=cv2.INTER_AREA)
    src.mkdir(parents=True)
    (src / png_name).write_bytes(encode_image(img, "png"))
    (src / jpg_name).write_bytes(encode_image(small, "jpg", 90))
    checked = [clean.check_image((src / n).read_bytes(), ("png", "jpg"), 1 << 30, 1) for n in (png_name, jpg_name)]
    assert clean.hamming(checked[0].phash, checked[1].phash) <= 4  # near duplicates at the default radius


def _kept(out) -> list[tuple[str, int, int]]:
    found = []
    for shard in list_shards(out, "raw-"):
        for s in iter_tar(shard):
            meta = json.loads(s["json"])
            found.append((next(k for k in ("png", "jpg") if k in s), meta["width"], meta["height"]))
    return found


ORDERS = [("b-original.png", "a-resized.jpg"), ("a-original.png", "b-resized.jpg")]


@pytest.mark.parametrize("names", ORDERS)
def test_ingest_keeps_the_png_original(tmp_path, names):
    _pair(tmp_path / "src", *names)
    assert main(["ingest", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    assert _kept(tmp_path / "out") == [("png", 400, 279)]
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert index["skipped_names"] == {"near_duplicate": [names[1]]}


@pytest.mark.parametrize("names", ORDERS)
def test_split_names_the_png_as_the_groups_copy(tmp_path, names):
    _pair(tmp_path / "src", *names)
    others = [f"other{k}.png" for k in range(4)]  # distinct images: a split needs both sides filled
    for k, name in enumerate(others):
        (tmp_path / "src" / name).write_bytes(encode_image(generate(100 + k, 320, 200), "png"))
    assert main(["split", str(tmp_path / "src"), "--out", str(tmp_path / "split"), "--no-progress"]) == 0
    files = json.loads((tmp_path / "split" / "split.json").read_text())["files"]
    pair = {n: f for n, f in files.items() if n not in others}
    assert {f["group"] for f in pair.values()} == {names[0]}
    assert {n: f["best_copy"] for n, f in pair.items()} == {names[0]: True, names[1]: False}


@pytest.mark.parametrize("names", ORDERS)
def test_merge_keeps_the_png_original(tmp_path, names):
    _pair(tmp_path / "src", *names)
    out = tmp_path / "out"
    assert main(["ingest", str(tmp_path / "src"), "--out", str(out), "--near-dup", "-1", "--shard-size", "1",
                 "--no-progress"]) == 0
    assert sorted(_kept(out)) == [("jpg", 300, 209), ("png", 400, 279)]
    assert merge.dedup(out, 4)["by_reason"] == {"near_duplicate": 1}
    assert _kept(out) == [("png", 400, 279)]


def test_rank_order_pixels_then_lossless_then_jpeg_quality_then_id():
    copies = [(300, 209, "jpg", 95, 1), (300, 209, "png", None, 9), (400, 279, "jpg", 70, 5),
              (300, 209, "jpg", 80, 0), (300, 209, "jpg", 95, 0)]
    best_first = sorted(copies, key=lambda c: clean.keep_rank(*c))
    assert best_first == [copies[2], copies[1], copies[4], copies[0], copies[3]]

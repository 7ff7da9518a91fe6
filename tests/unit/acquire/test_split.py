"""awm split (and the demo's --data split): exact and near duplicates never straddle train and eval."""

import json

import cv2
import pytest

from awm.acquire import clean
from awm.cli import main
from awm.data.synth import generate
from awm.imageio import encode_image


def _folder(d, n=12):
    """n distinct pictures; picture 0 also as a half-size JPEG, picture 1 as an exact copy in a subfolder."""
    (d / "sub").mkdir(parents=True)
    imgs = [generate(100 + i, 192, 128) for i in range(n)]
    for i, img in enumerate(imgs):
        (d / f"p{i:02d}.png").write_bytes(encode_image(img, "png"))
    small = cv2.resize(imgs[0], (96, 64), interpolation=cv2.INTER_AREA)
    (d / "sub" / "p00_small.jpg").write_bytes(encode_image(small, "jpg", 70))
    (d / "sub" / "p01_copy.png").write_bytes((d / "p01.png").read_bytes())
    (d / "broken.png").write_bytes((d / "p02.png").read_bytes()[:300])
    return {"p00.png": "sub/p00_small.jpg", "p01.png": "sub/p01_copy.png"}


def test_duplicate_groups_are_transitive_and_exact_only_when_asked():
    md5s = ["a", "b", "c", "a", "d"]
    hashes = [0b0, 0b111, 0b1111111, 1 << 40, None]
    assert clean.duplicate_groups(md5s, hashes, 4) == [0, 0, 0, 0, 4]  # 0~1 (3 bits), 1~2 (4 bits), 3 = md5 of 0
    assert clean.duplicate_groups(md5s, hashes, -1) == [0, 1, 2, 0, 4]


@pytest.mark.parametrize("seed", range(6))
def test_split_keeps_copies_with_their_original(tmp_path, seed):
    pairs = _folder(tmp_path / "src")
    out = tmp_path / "out"
    argv = ["split", str(tmp_path / "src"), "--out", str(out), "--eval-fraction", "0.25", "--seed", str(seed),
            "--no-progress"]
    assert main(argv) == 0
    m = json.loads((out / "split.json").read_text())
    side = {rel: e["split"] for rel, e in m["files"].items()}
    for a, b in pairs.items():
        assert side[a] == side[b] and m["files"][a]["group"] == m["files"][b]["group"]
    assert (m["images"], m["groups"], m["skipped_names"]) == (14, 12, {"truncated": ["broken.png"]})
    assert m["eval"] == 4 and m["train"] == 10  # round(0.25 * 14), whole groups
    for rel, s in side.items():
        assert (out / s / rel).resolve() == (tmp_path / "src" / rel).resolve()
        assert not (out / ("eval" if s == "train" else "train") / rel).exists()
    first = side
    assert main(argv) == 0  # a rerun replaces the previous split, same result
    assert {r: e["split"] for r, e in json.loads((out / "split.json").read_text())["files"].items()} == first
    assert sum(1 for p in out.rglob("*") if p.is_symlink()) == 14


def test_split_refuses_what_cannot_give_two_sides(tmp_path, capsys):
    import logging

    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logging.getLogger("awm.cli").addHandler(handler)
    src, empty = tmp_path / "src", tmp_path / "empty"
    src.mkdir()
    empty.mkdir()
    img = generate(1, 128, 96)
    (src / "a.png").write_bytes(encode_image(img, "png"))
    (src / "b.jpg").write_bytes(encode_image(img, "jpg", 90))  # one picture twice
    assert main(["split", str(src), "--out", str(tmp_path / "o"), "--no-progress"]) == 1
    assert main(["split", str(empty), "--out", str(tmp_path / "o"), "--no-progress"]) == 1
    logging.getLogger("awm.cli").removeHandler(handler)
    assert any("2 usable images in 1 duplicate groups" in m and "nothing written" in m for m in seen), seen
    assert any(f"{empty}: no image to split" in m for m in seen), seen
    assert not (tmp_path / "o").exists()  # a failed split writes nothing, not a split.json to blame later
    assert main(["split", str(src), "--out", str(src / "inside")]) == 2
    assert "config key 'out'" in capsys.readouterr().err
    assert main(["split", str(src), "--out", str(tmp_path / "o2"), "--eval-fraction", "1.5"]) == 2


def test_demo_data_split_never_puts_a_resized_training_image_in_eval(tmp_path):
    from awm.demo import _user_split

    pairs = _folder(tmp_path / "src", n=16)
    for seed in range(4):
        dst = tmp_path / f"data{seed}"
        _user_split(tmp_path / "src", dst, seed)
        eval_files = {p.relative_to(dst / "eval").as_posix() for p in (dst / "eval").rglob("*") if p.is_symlink()}
        train_files = {p.relative_to(dst / "train").as_posix() for p in (dst / "train").rglob("*") if p.is_symlink()}
        assert eval_files and train_files and not eval_files & train_files
        for a, b in pairs.items():
            assert (a in eval_files) == (b in eval_files), (seed, a, b)

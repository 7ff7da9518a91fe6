"""The same broken files get the same, named skip reasons from ingest and from shard."""

import json
import struct
import zlib

import numpy as np

from awm.cli import main
from awm.data.synth import generate
from awm.imageio import encode_image


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_ingest_and_shard_name_the_same_files_with_the_same_reasons(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    png, jpg = encode_image(generate(1, 96, 64), "png"), encode_image(generate(2, 96, 64), "jpg")
    bomb = (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + _chunk(b"IEND", b""))
    bad = {"cut.png": (png[: len(png) // 2], "truncated"), "sub/cut.jpg": (jpg[: len(jpg) // 2], "truncated"),
           "zero.png": (b"", "empty_file"), "page.jpg": (b"<html>503</html>", "not_an_image"),
           "bomb.png": (bomb, "too_many_pixels"), "dot.png": (encode_image(np.zeros((1, 1, 3), np.uint8), "png"),
                                                              "too_small")}
    for name, (data, _) in bad.items():
        (src / name).write_bytes(data)
    (src / "good.png").write_bytes(encode_image(generate(3, 96, 64), "png"))
    expected = {name: reason for name, (_, reason) in bad.items()}

    assert main(["ingest", str(src), "--out", str(tmp_path / "raw"), "--min-side", "8", "--no-progress"]) == 0
    assert main(["shard", "--in", str(src), "--out", str(tmp_path / "pairs"), "--scales", "2", "--no-progress"]) == 0
    for out in ("raw", "pairs"):
        index = json.loads((tmp_path / out / "index.json").read_text())
        named = {name: reason for reason, names in index["skipped_names"].items() for name in names}
        assert named == expected, out
        assert index["skipped"] == {r: list(expected.values()).count(r) for r in set(expected.values())}
    ingest = json.loads((tmp_path / "raw" / "index.json").read_text())["ingest"]
    assert {n: r for r, ns in ingest["skipped_names"].items() for n in ns} == expected

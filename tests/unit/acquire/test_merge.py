"""The merge step's dedup: first wins in a fixed order, drops recorded with the id they duplicate,
shards rewritten so the index counts what they hold, and an interrupted merge finishes on rerun."""

import hashlib
import json

from awm.acquire import merge
from awm.shardio.read import iter_tar
from awm.shardwrite import ShardStats, read_index, stats_path, write_index, write_shard


def _sample(key: int, blob: bytes, phash: int) -> dict:
    return {"__key__": str(key), "bin": blob, "json": {"id": key, "md5": hashlib.md5(blob).hexdigest(),
                                                       "phash": f"{phash:016x}"}}


def _folder(path, shards):
    for k, samples in enumerate(shards):
        st = ShardStats(f"raw-{k:06d}.tar")
        st.skip("too_small")
        write_shard(path / st.shard, samples, st)
    write_index(path, "raw-")
    return path


def test_dedup_drops_later_copies_and_survives_interruption(tmp_path):
    h1, h2 = 0x0123456789ABCDEF, 0xFEDCBA9876543210
    out = _folder(tmp_path / "out", [[_sample(1, b"one", h1), _sample(2, b"two", h2)],
                                     [_sample(3, b"one", h1 ^ 0xFF00), _sample(4, b"four", h2 ^ 0b101),
                                      _sample(5, b"five", 0x5555)]])
    shard1 = out / "raw-000001.tar"
    tar_before, stats_before = shard1.read_bytes(), stats_path(shard1).read_text()
    got = merge.dedup(out, 4)
    assert got == {"dropped": 2, "new": 2, "by_reason": {"duplicate_md5": 1, "near_duplicate": 1}}
    record = json.loads((out / merge.RECORD).read_text())["dropped"]
    assert {k: (r["reason"], r["of"], r["shard"]) for k, r in record.items()} == {
        "3": ("duplicate_md5", 1, "raw-000001.tar"), "4": ("near_duplicate", 2, "raw-000001.tar")}
    after = shard1.read_bytes(), stats_path(shard1).read_text()

    def check() -> None:
        assert [s["__key__"] for s in iter_tar(shard1)] == ["5"]
        st = json.loads(stats_path(shard1).read_text())
        assert st["nsamples"] == 1 and st["skipped"] == {"duplicate_md5": 1, "near_duplicate": 1, "too_small": 1}
        write_index(out, "raw-")
        assert read_index(out)["nsamples"] == 3

    check()
    shard1.write_bytes(tar_before)  # killed before the shard was rewritten: the next merge does it
    stats_path(shard1).write_text(stats_before)
    assert merge.dedup(out, 4)["new"] == 2
    check()
    stats_path(shard1).write_text(stats_before)  # killed between the tar and its stats
    assert merge.dedup(out, 4)["new"] == 0
    check()
    assert (shard1.read_bytes(), stats_path(shard1).read_text()) == after  # same bytes, no double count
    mtime = shard1.stat().st_mtime_ns
    merge.dedup(out, 4)
    assert shard1.stat().st_mtime_ns == mtime


def test_earlier_sources_win(tmp_path):
    first = _folder(tmp_path / "first", [[_sample(7, b"two", 0x1111)]])
    out = _folder(tmp_path / "out", [[_sample(1, b"one", 0xF0F0), _sample(2, b"two", 0x2222)]])
    merge.dedup(out, 4, [first])
    (r,) = json.loads((out / merge.RECORD).read_text())["dropped"].values()
    assert (r["id"], r["of"], r["of_folder"]) == (2, 7, str(first))
    assert [s["__key__"] for s in iter_tar(out / "raw-000000.tar")] == ["1"]

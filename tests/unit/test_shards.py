import json

import pytest

from awm import shards


def test_tar_is_deterministic_and_readable(tmp_path):
    samples = [{"__key__": "12", "png": b"abc", "json": {"id": 12}}, {"__key__": "13", "jpg": b"d"}]
    assert shards.tar_bytes(samples) == shards.tar_bytes(samples)
    p = shards.write_shard(tmp_path / "raw-000000.tar", samples, shards.ShardStats("raw-000000.tar"))
    got = list(shards.iter_tar(p))
    assert [g["__key__"] for g in got] == ["12", "13"] and json.loads(got[0]["json"]) == {"id": 12}
    assert shards.shard_done(p)
    idx = json.loads(shards.write_index(tmp_path, "raw-").read_text())
    assert idx["nsamples"] == 2 and idx["shardlist"] == [{"url": "raw-000000.tar", "nsamples": 2, "filesize": p.stat().st_size}]


def test_keys_and_parts():
    with pytest.raises(ValueError):
        shards.check_key("a.b")
    part = shards.Part.parse("1/3")
    assert [i for i in range(7) if part.takes(i)] == [1, 4]
    for bad in ("3/3", "x", "1/0"):
        with pytest.raises(ValueError):
            shards.Part.parse(bad)

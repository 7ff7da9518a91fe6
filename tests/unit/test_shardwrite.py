import json
import re
import sys
from pathlib import Path

import pytest

from awm import shardwrite
from awm.shardio.cache import BACKOFF_ENV, CACHE_ENV, ShardFetchError, local_path
from awm.shardio.locations import _join, resolve
from awm.shardio.members import group_members
from awm.shardio.read import TarReader, iter_tar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pairs import make_pair_shards  # noqa: E402


def test_tar_is_deterministic_and_readable(tmp_path):
    samples = [{"__key__": "12", "png": b"abc", "json": {"id": 12}}, {"__key__": "13", "jpg": b"d"}]
    assert shardwrite.tar_bytes(samples) == shardwrite.tar_bytes(samples)
    p = shardwrite.write_shard(tmp_path / "raw-000000.tar", samples, shardwrite.ShardStats("raw-000000.tar"))
    got = list(iter_tar(p))
    assert [g["__key__"] for g in got] == ["12", "13"] and json.loads(got[0]["json"]) == {"id": 12}
    assert shardwrite.shard_done(p)
    idx = json.loads(shardwrite.write_index(tmp_path, "raw-").read_text())
    assert idx["nsamples"] == 2 and idx["shardlist"] == [{"url": "raw-000000.tar", "nsamples": 2, "filesize": p.stat().st_size}]


def test_keys():
    with pytest.raises(ValueError):
        shardwrite.check_key("a.b")


def test_tarwriter_bytes_equal_a_member_by_member_tar(tmp_path):
    """tar_bytes gives exactly the tar a hand-built tarfile writer gives."""
    import io
    import tarfile

    samples = [{"__key__": "a1", "lr_x2.jpg": b"yy", "hr.png": b"x" * 1000, "json": {"b": 1, "a": 2}},
               {"__key__": "b2", "hr.png": b"z" * 513, "json": "text"}]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for s in samples:
            for ext in sorted(k for k in s if k != "__key__"):
                v = s[ext]
                v = json.dumps(v, sort_keys=True).encode() if isinstance(v, dict) else v
                v = v.encode() if isinstance(v, str) else v
                info = tarfile.TarInfo(f"{s['__key__']}.{ext}")
                info.size, info.mtime, info.mode, info.uname, info.gname = len(v), 0, 0o644, "", ""
                tar.addfile(info, io.BytesIO(v))
    assert shardwrite.tar_bytes(samples) == buf.getvalue()


def test_tar_bytes_equal_webdataset_tarwriter_and_streamed_members():
    """The torch-free writer is byte-identical to webdataset.TarWriter with the same fixed metadata
    (shards written before it stay identical), and members streamed one sample at a time, closed by
    tar_end, give the same bytes (every record-padding length, a PAX header for a long key)."""
    import io

    import webdataset

    for n in range(22):
        samples = [{"__key__": f"{i}" + "k" * (150 if i == 3 else 0), "png": bytes([i]) * (37 * i * i),
                    "json": {"id": i, "t": "é"}, "txt": "ü" * i} for i in range(n)]
        buf = io.BytesIO()
        with webdataset.TarWriter(buf, user="", group="", mode=0o644, mtime=0, encoder=False) as tar:
            for s in samples:
                tar.write({**s, "json": json.dumps(s["json"], sort_keys=True).encode(), "txt": s["txt"].encode()})
        body = b"".join(shardwrite.sample_tar(s) for s in samples)
        assert shardwrite.tar_bytes(samples) == buf.getvalue() == body + shardwrite.tar_end(len(body))


def test_grouping_is_consecutive_and_refuses_repeated_members():
    import tarfile

    members = [("a.hr.png", 1), ("a.JSON", 2), ("dir/b.png", 3), ("a.png", 4)]
    assert list(group_members(members)) == [("a", {"hr.png": 1, "json": 2}), ("b", {"png": 3}),
                                                    ("a", {"png": 4})]
    with pytest.raises(tarfile.ReadError, match="x.png repeated"):
        list(group_members([("x.png", 1), ("x.png", 2)], "s.tar"))


def test_locations_resolve_to_the_same_shards(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    d = make_pair_shards(tmp_path / "d", [2, 1])
    folder = resolve(d)
    assert [(s.name, s.nsamples) for s in folder.shards] == [("train-000000.tar", 2), ("train-000001.tar", 1)]
    assert all(s.filesize == Path(s.url).stat().st_size for s in folder.shards)
    assert resolve(d / "index.json").shards == folder.shards
    brace = resolve(f"{d}/train-{{000000..000001}}.tar").counted()
    assert [(s.url, s.nsamples) for s in brace.shards] == [(s.url, s.nsamples) for s in folder.shards]
    pipe = resolve(f"pipe:cat {d}/index.json")
    assert [s.url for s in pipe.shards] == [f"pipe:cat {d}/train-000000.tar", f"pipe:cat {d}/train-000001.tar"]
    one = resolve(f"pipe:cat {d}/train-000001.tar | cat -")
    assert [(s.url, s.name) for s in one.shards] == [(f"pipe:cat {d}/train-000001.tar | cat -", "train-000001.tar")]
    assert resolve(one.location).counted().shards[0].nsamples == 1
    assert _join("https://h/x/index.json", "train-000000.tar") == "https://h/x/train-000000.tar"
    for bad in ("pipe:rm -rf ~", "x.tar; rm -rf ~", "$(reboot).tar"):  # an index is data, never a command
        with pytest.raises(ValueError, match="pipe:|plain relative"):
            _join("pipe:cat /d/index.json", bad)
    with pytest.raises(ValueError, match="pipe:"):
        _join("https://h/x/index.json", "pipe:curl evil")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        resolve(tmp_path / "nowhere")


def test_pipe_shards_read_like_local_ones(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(BACKOFF_ENV, "0")
    d = make_pair_shards(tmp_path / "d", [3])
    local = list(iter_tar(d / "train-000000.tar"))
    piped = list(iter_tar(f"pipe:cat {d}/train-000000.tar"))
    assert [{k: v for k, v in s.items() if k != "__url__"} for s in piped] == \
           [{k: v for k, v in s.items() if k != "__url__"} for s in local]
    reader = TarReader()
    assert reader.read(f"pipe:cat {d}/train-000000.tar", 2) == {k: v for k, v in local[2].items() if k != "__url__"}
    reader.close()
    with pytest.raises(ShardFetchError, match="pipe:cat /no/such.tar: command exited with status 1"):
        local_path("pipe:cat /no/such.tar")
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.endswith((".part", "such.tar"))]


def test_truncated_local_shard_is_an_error_not_fewer_samples(tmp_path):
    import tarfile

    d = make_pair_shards(tmp_path / "d", [3])
    p = d / "train-000000.tar"
    p.write_bytes(p.read_bytes()[:3000])
    with pytest.raises(tarfile.ReadError, match="train-000000.tar"):
        TarReader().read(str(p), 0)
    p.write_bytes(b"\xff" * 2048)
    with pytest.raises(tarfile.ReadError, match="train-000000.tar: not a readable tar"):
        TarReader().read(str(p), 0)


def test_readme_interop_snippet_runs(tmp_path):
    """shards/README.md: webdataset.WebDataset(...).decode("rgb8") and wids.ShardListDataset read
    AWM's pair shards and give the same images as AWM's reader (the snippet asserts it)."""
    text = (Path(__file__).resolve().parents[2] / "shards" / "README.md").read_text()
    snippet = re.search(r"## Reading AWM shards with other tools.*?```python\n(.*?)```", text, re.S).group(1)
    d = make_pair_shards(tmp_path / "eval", [3, 2], split="eval", seed=4)
    assert '"shards/eval"' in snippet and '"/tmp/awm-wids-cache"' in snippet
    snippet = snippet.replace('"shards/eval"', repr(str(d))).replace('"/tmp/awm-wids-cache"',
                                                                       repr(str(tmp_path / "wids")))
    scope: dict = {}
    exec(compile(snippet, "shards/README.md", "exec"), scope)  # noqa: S102 - the documented snippet itself
    assert len(scope["ours"]) == 5 and len(scope["ds"]) == 5


def test_shard_with_other_sample_count_than_its_index_is_an_error(tmp_path):
    d = make_pair_shards(tmp_path / "d", [3])
    url = str(d / "train-000000.tar")
    assert TarReader(nsamples={url: 3}).read(url, 2)["__key__"] == "img00002"
    with pytest.raises(ShardFetchError, match="3 samples, the index says 4"):
        TarReader(nsamples={url: 4}).read(url, 0)

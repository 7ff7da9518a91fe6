"""The remote-shard cache under a size bound (AWM_SHARD_CACHE_MAX) with concurrent readers in
several processes, and streaming with the cache off (AWM_SHARD_CACHE=off), over real HTTP."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from awm.shardio.cache import BACKOFF_ENV, CACHE_ENV, CACHE_MAX_ENV, cache_limit, fetch_bytes, prune_cache
from awm.shardio.locations import resolve
from awm.shardio.read import TarReader, iter_tar
from awm.shardwrite import ShardStats, write_index, write_shard

NSHARDS, PER_SHARD = 6, 4


class Server:
    """Serves a folder; ``cut`` names paths whose next response stops half-way (full Content-Length)."""

    def __init__(self, root: Path):
        self.root, self.cut, self.hits = root, set(), []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                path = server.root / self.path.lstrip("/")
                server.hits.append(self.path)
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.path in server.cut:
                    server.cut.discard(self.path)
                    self.wfile.write(data[:len(data) // 2])
                    self.close_connection = True
                    return
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served(tmp_path):
    root = tmp_path / "srv"
    rng = np.random.default_rng(0)
    for k in range(NSHARDS):
        samples = []
        for i in range(PER_SHARD):
            blob = rng.integers(0, 256, 30_000, dtype=np.uint8).tobytes()
            samples.append({"__key__": f"s{k}_{i}", "bin": blob, "json": {"md5": hashlib.md5(blob).hexdigest()}})
        write_shard(root / f"raw-{k:06d}.tar", samples, ShardStats(f"raw-{k:06d}.tar"))
    write_index(root, "raw-")
    srv = Server(root)
    yield srv, root
    srv.close()


READS = 12  # per reader: a count, not a time, so a loaded machine does the same work (slower)
READER = r"""
import hashlib, json, pathlib, random, sys, time
from awm.shardio.locations import resolve
from awm.shardio.read import TarReader, iter_tar
import webdataset.tariterators, wids.wids_mmtar  # they import torch: before the readers start
seed, reads_wanted, gate = int(sys.argv[2]), int(sys.argv[3]), pathlib.Path(sys.argv[4])
refs = resolve(sys.argv[1]).shards
rng, reads, reader = random.Random(seed), 0, TarReader(max_open=1)
(gate / f"ready-{seed}").touch()  # all readers start together, however slowly each one got here
while len(list(gate.glob("ready-*"))) < 3:
    time.sleep(0.01)
while reads < reads_wanted:
    ref = rng.choice(refs)
    if seed == 0 and reads % 2 == 0:  # the shard stays open (leased) while the next ones are read
        samples = [reader.read(ref.url, i) for i in range(ref.nsamples)]
    else:
        samples = list(iter_tar(ref))
    assert len(samples) == ref.nsamples, (ref.url, len(samples))
    for s in samples:
        assert hashlib.md5(bytes(s["bin"])).hexdigest() == json.loads(bytes(s["json"]))["md5"], ref.url
    reads += 1
reader.close()
print(reads)
"""


@pytest.mark.slow
def test_bounded_cache_never_pulls_a_shard_from_under_a_reader(served, tmp_path, monkeypatch):
    srv, root = served
    cache = tmp_path / "cache"
    size = (root / "raw-000000.tar").stat().st_size
    bound = int(size * 2.5)
    env = {**os.environ, CACHE_ENV: str(cache), CACHE_MAX_ENV: str(bound),
           "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    gate = tmp_path / "gate"
    gate.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", READER, f"{srv.url}/index.json", str(seed), str(READS), str(gate)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for seed in range(3)]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
        assert int(out) == READS
    fetched = sum(h.endswith(".tar") for h in srv.hits)
    assert fetched > NSHARDS  # the bound made the cache evict and fetch again: pruning was exercised
    # Shards leased at a reader's last fetch may have kept the cache above the bound; with no
    # reader left, the next prune (any fetch's) brings it under.
    monkeypatch.setenv(CACHE_ENV, str(cache))
    assert prune_cache(bound) <= bound
    cached = list(cache.glob("*.tar"))
    assert sum(p.stat().st_size for p in cached) <= bound
    assert not list(cache.glob(".*.part"))
    for p in cached:  # what is left is complete
        assert p.read_bytes() == (root / p.name.split("-", 1)[1]).read_bytes()


def test_cache_bound_parsing(monkeypatch):
    for text, want in (("", None), ("0", 0), ("512", 512), ("2K", 2048), ("1.5G", 3 << 29), ("3MB", 3 << 20)):
        monkeypatch.setenv(CACHE_MAX_ENV, text)
        assert cache_limit() == want
    monkeypatch.setenv(CACHE_MAX_ENV, "lots")
    with pytest.raises(ValueError, match="AWM_SHARD_CACHE_MAX"):
        cache_limit()


def test_cache_off_streams_without_storing(served, tmp_path, monkeypatch):
    srv, root = served
    monkeypatch.setenv(CACHE_ENV, "off")
    monkeypatch.setenv(BACKOFF_ENV, "0.01")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    refs = resolve(f"{srv.url}/index.json").shards
    srv.cut.add("/raw-000001.tar")  # the stream breaks once: opened again, no sample twice or lost
    keys = [s["__key__"] for ref in refs for s in iter_tar(ref)]
    assert keys == [f"s{k}_{i}" for k in range(NSHARDS) for i in range(PER_SHARD)]
    assert srv.hits.count("/raw-000001.tar") == 2
    assert not Path("off").exists()  # the variable's value is never taken for a folder
    assert not list((tmp_path / "tmp").iterdir())
    reader = TarReader(max_open=1)  # random access: a private copy only while open
    assert reader.read(refs[2].url, 3)["__key__"] == "s2_3"
    assert len(list((tmp_path / "tmp").iterdir())) == 1
    reader.read(refs[3].url, 0)
    assert len(list((tmp_path / "tmp").iterdir())) == 1
    reader.close()
    assert not list((tmp_path / "tmp").iterdir())
    assert json.loads(fetch_bytes(f"{srv.url}/index.json"))["nsamples"] == NSHARDS * PER_SHARD

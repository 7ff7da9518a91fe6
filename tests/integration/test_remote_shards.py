"""Shards over HTTP (a real server on 127.0.0.1) and pipe: URLs: awm train, eval and shard give the
same results as from a local folder; network faults are retried or end in exit 1 naming the URL,
and the shard cache never holds a partial file."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import threading
from collections import Counter
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing import get_context
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pairs import make_pair_shards  # noqa: E402

from awm import shardwrite  # noqa: E402
from awm.data.synth import generate  # noqa: E402
from awm.shardio.cache import BACKOFF_ENV, CACHE_ENV, RETRIES_ENV, ShardFetchError, cache_path, local_path  # noqa: E402
from awm.shardio.locations import resolve  # noqa: E402
from awm.shardio.read import iter_tar  # noqa: E402
from awm.shardio.ref import ShardRef  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


class ShardServer:
    """Serves a folder over HTTP on 127.0.0.1 with faults queued per path.

    Faults (each used by one request, in order): ``503``, ``reset`` (half the body, then a TCP
    reset), ``truncate`` (half the body under the full Content-Length, then a clean close) and
    ``grow`` (the file plus 512 bytes: a shard that changed since its index was written).
    """

    def __init__(self, root: Path):
        self.root, self.faults, self.hits, self.lock = root, {}, Counter(), threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, self))
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> ShardServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{path}"

    def fail(self, path: str, *faults: str) -> None:
        with self.lock:
            self.faults.setdefault(path, []).extend(faults)

    def next_fault(self, path: str) -> str | None:
        with self.lock:
            self.hits[path] += 1
            queue = self.faults.get(path)
            return queue.pop(0) if queue else None


class _Handler(BaseHTTPRequestHandler):
    def __init__(self, server: ShardServer, *args):
        self.shards = server
        super().__init__(*args)

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = self.path.lstrip("/")
        fault = self.shards.next_fault(path)
        f = self.shards.root / path
        if fault == "503":
            self.send_error(503)
            return
        if not f.is_file():
            self.send_error(404)
            return
        body = f.read_bytes() + (b"\0" * 512 if fault == "grow" else b"")
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if fault in ("reset", "truncate"):
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            if fault == "reset":  # SO_LINGER 0: close sends RST instead of FIN
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return
        self.wfile.write(body)


def env(cache: Path, **extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items()
             if k not in ("ACCELERATE_USE_CPU", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    return {**clean, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", CACHE_ENV: str(cache),
            BACKOFF_ENV: "0.05", RETRIES_ENV: "3", **extra}


def assert_cache_clean(cache: Path, originals: dict[str, bytes]) -> None:
    """No temp file left, and every cached shard is byte-identical to the one served."""
    if not cache.exists():
        return
    assert not [p.name for p in cache.iterdir() if p.name.endswith(".part")]
    for p in cache.glob("*.tar"):
        name = p.name.split("-", 1)[1]
        assert p.read_bytes() == originals[name], p


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    d = tmp_path_factory.mktemp("served")
    make_pair_shards(d / "train", [2, 6, 3], size=(96, 64))
    make_pair_shards(d / "eval", [3, 2], size=(96, 64), split="eval", seed=5)
    raw = d / "raw"
    for i in range(2):
        samples = [{"__key__": f"{100 + 3 * i + k}", "png": _png(generate(40 + 3 * i + k, 72, 56)),
                    "json": {"id": 100 + 3 * i + k}} for k in range(3)]
        shardwrite.write_shard(raw / f"raw-{i:06d}.tar", samples, shardwrite.ShardStats(f"raw-{i:06d}.tar"))
    shardwrite.write_index(raw, "raw-")
    with ShardServer(d) as server:
        yield d, server


def _png(img) -> bytes:
    from awm.imageio import encode_image

    return encode_image(img, "png")


def _originals(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in d.rglob("*.tar")}


def _train(location_train: str, location_eval: str, runs: Path, name: str, cache: Path) -> Path:
    args = {"runs": runs, "name": name, "data.train": location_train, "data.eval": location_eval,
            "data.patch": 32, "data.batch_size": 4, "data.workers": 1, "log.every": 4, "steps": 24,
            "gan_start": 24, "validation.every": 24, "validation.crop": 64, "checkpoint.state_every": 1000,
            "deterministic": "true"}
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "awm", "train",
           "--config", "tiny-cpu", *[f"{k}={v}" for k, v in args.items()]]
    r = subprocess.run(cmd, env=env(cache), capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    return runs / name


def test_train_from_url_and_pipe_equals_local(served, tmp_path):
    d, server = served
    cache = tmp_path / "cache"
    before = Counter(server.hits)
    local = _train(str(d / "train"), str(d / "eval"), tmp_path, "local", cache)
    url = _train(server.url("train/index.json"), server.url("eval/index.json"), tmp_path, "url", cache)
    pipe = _train(f"pipe:cat {d}/train/train-{{000000..000002}}.tar", f"pipe:cat {d}/eval/index.json",
                  tmp_path, "pipe", cache)
    want = load_file(local / "checkpoints" / "last" / "model.safetensors")
    for run in (url, pipe):
        got = load_file(run / "checkpoints" / "last" / "model.safetensors")
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want), run
        stats = json.loads((run / "train_stats.json").read_text())
        assert stats["status"] == "done" and stats["step"] == 24 and stats["world_size"] == 2
    for p in ("train/train-000000.tar", "train/train-000001.tar", "train/train-000002.tar"):
        assert server.hits[p] - before[p] == 1, (p, server.hits)  # 2 ranks x workers + the pipe run: one download
    assert_cache_clean(cache, _originals(d))


def _eval(location: str, out: Path, cache: Path, nproc: int = 1) -> subprocess.CompletedProcess:
    args = ["eval", "--data", location, "--scale", "2", "--models", "bicubic,lanczos", "--metrics", "psnry,ssim",
            "--grid", "2", "--out", str(out)]
    cmd = ([sys.executable, "-m", "awm"] if nproc == 1 else
           [str(BIN / "torchrun"), "--standalone", f"--nproc_per_node={nproc}", "-m", "awm"])
    return subprocess.run(cmd + args, env=env(cache), capture_output=True, text=True, timeout=600, cwd=ROOT)


def test_eval_from_url_and_pipe_equals_local(served, tmp_path):
    d, server = served
    cache = tmp_path / "cache"
    runs = {"local": (str(d / "eval"), 1), "url": (server.url("eval/index.json"), 2),
            "brace": (server.url("eval/eval-{000000..000001}.tar"), 1),
            "pipe": (f"pipe:cat {d}/eval/index.json", 1)}
    for name, (location, nproc) in runs.items():
        r = _eval(location, tmp_path / name, cache, nproc)
        assert r.returncode == 0, (name, r.stderr[-3000:])
    want = (tmp_path / "local" / "per_image.csv").read_bytes()
    assert want.count(b"\n") == 1 + 5 * 2
    for name in ("url", "brace", "pipe"):
        assert (tmp_path / name / "per_image.csv").read_bytes() == want, name
    assert_cache_clean(cache, _originals(d))


def test_shard_from_url_and_pipe_equals_local(served, tmp_path):
    d, server = served
    cache = tmp_path / "cache"
    outs = {}
    for name, location in (("local", str(d / "raw")), ("url", server.url("raw/index.json")),
                           ("pipe", f"pipe:cat {d}/raw/raw-{{000000..000001}}.tar")):
        out = tmp_path / name
        r = subprocess.run([sys.executable, "-m", "awm", "shard", "--in", location, "--out", str(out),
                            "--split", "eval", "--scales", "2", "--shard-size", "4", "--workers", "2"],
                           env=env(cache), capture_output=True, text=True, timeout=600, cwd=ROOT)
        assert r.returncode == 0, (name, r.stderr[-3000:])
        outs[name] = {p.name: p.read_bytes() for p in out.glob("eval-*.tar")}
    assert len(outs["local"]) == 2
    assert outs["url"] == outs["local"] and outs["pipe"] == outs["local"]
    assert_cache_clean(cache, _originals(d))


@pytest.mark.parametrize("faults", [("reset",), ("503", "503"), ("truncate",), ("reset", "503", "truncate")])
def test_transient_faults_are_retried(served, tmp_path, monkeypatch, faults):
    d, server = served
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(BACKOFF_ENV, "0.01")
    ref = next(s for s in resolve(server.url("train/index.json")).shards if s.name == "train-000001.tar")
    server.fail("train/train-000001.tar", *faults)
    before = server.hits["train/train-000001.tar"]
    got = local_path(ref)
    assert got.read_bytes() == (d / "train" / "train-000001.tar").read_bytes()
    assert server.hits["train/train-000001.tar"] - before == len(faults) + 1
    assert [s["__key__"] for s in iter_tar(ref)] == [f"img{n:05d}" for n in range(2, 8)]
    assert_cache_clean(tmp_path / "cache", _originals(d))


@pytest.mark.parametrize("fault", ["503", "truncate", "reset", "grow"])
def test_persistent_fault_names_the_url_and_caches_nothing(served, tmp_path, monkeypatch, fault):
    d, server = served
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(BACKOFF_ENV, "0.01")
    ref = next(s for s in resolve(server.url("train/index.json")).shards if s.name == "train-000002.tar")
    server.fail("train/train-000002.tar", *[fault] * 6)  # retries (5) + 1
    with pytest.raises(ShardFetchError, match="train/train-000002.tar"):
        local_path(ref)
    server.faults.pop("train/train-000002.tar", None)
    assert not list((tmp_path / "cache").glob("*train-000002.tar*.part"))
    assert not (cache_path(ref.url)).exists()


def test_changed_cached_shard_is_fetched_again(served, tmp_path, monkeypatch):
    d, server = served
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    ref = next(s for s in resolve(server.url("train/index.json")).shards if s.name == "train-000000.tar")
    path = local_path(ref)
    path.write_bytes(path.read_bytes()[:-512])  # a copy that no longer matches the index
    assert local_path(ref).read_bytes() == (d / "train" / "train-000000.tar").read_bytes()


def test_cli_exits_1_naming_the_url(served, tmp_path):
    d, server = served
    server.fail("eval/eval-000001.tar", *["503"] * 4)  # AWM_SHARD_RETRIES=3 in env(): 4 attempts
    r = _eval(server.url("eval/index.json"), tmp_path / "out", tmp_path / "cache")
    server.faults.pop("eval/eval-000001.tar", None)
    assert r.returncode == 1, r.stderr[-3000:]
    assert server.url("eval/eval-000001.tar") in r.stderr and "HTTP 503" in r.stderr
    assert not (tmp_path / "out" / "per_image.csv").exists()
    assert_cache_clean(tmp_path / "cache", _originals(d))
    missing = _eval(server.url("nowhere/index.json"), tmp_path / "out2", tmp_path / "cache")
    assert missing.returncode == 1 and server.url("nowhere/index.json") in missing.stderr


def test_concurrent_processes_share_one_download(served, tmp_path, monkeypatch):
    d, server = served
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))  # inherited by the spawned processes
    monkeypatch.setenv(BACKOFF_ENV, "0.01")
    path = "eval/eval-000000.tar"
    server.fail(path, "reset")  # the first download fails half-way: nobody may see its partial file
    before = server.hits[path]
    with get_context("spawn").Pool(4) as pool:
        got = pool.map(local_path, [ShardRef(server.url(path), "eval-000000.tar")] * 4)
    assert {p.read_bytes() for p in got} == {(d / path).read_bytes()}
    assert server.hits[path] - before == 2  # the reset attempt and its retry, for all four processes
    assert_cache_clean(tmp_path / "cache", _originals(d))


def test_upscale_and_report_from_url_equal_local(served, tmp_path):
    from awm.eval.report import run_row
    from awm.models.archs import build_model
    from awm.models.checkpoint import save_checkpoint

    d, server = served
    ckpt = save_checkpoint(tmp_path / "ckpt", build_model("compact-tiny", 2), "compact-tiny", {}, 2, step=0)
    outs = {}
    for name, location in (("local", str(d / "eval")), ("url", server.url("eval/index.json"))):
        r = subprocess.run([sys.executable, "-m", "awm", "upscale", "--model", str(ckpt), location,
                            "--out", str(tmp_path / name), "--tile", "32", "--tile-pad", "8"],
                           env=env(tmp_path / "cache"), capture_output=True, text=True, timeout=600, cwd=ROOT)
        assert r.returncode == 0, (name, r.stderr[-3000:])
        outs[name] = {p.name: p.read_bytes() for p in (tmp_path / name).iterdir() if p.suffix == ".png"}
    assert len(outs["local"]) == 5 and outs["url"] == outs["local"]
    rows = {}
    for name, location in (("local", str(d / "train")), ("url", server.url("train/index.json"))):
        run = tmp_path / "runs" / name
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(json.dumps({"data": {"train": location, "scale": 2}}))
        rows[name] = run_row(run)[0]
    assert rows["url"]["data_size"] == rows["local"]["data_size"] == 11
    assert rows["url"]["preset"] == rows["local"]["preset"] == "test"

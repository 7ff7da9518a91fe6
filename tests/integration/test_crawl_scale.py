"""`awm submit crawl --array n` against a real booru server with 20,000 posts: the listing is paged
once for all parts, the whole job stays within --rate, every eligible post is kept exactly once,
md5 and near duplicates are dropped across parts (recorded with the id they duplicate), and a job
killed mid-way and submitted again ends with the same set. The same on the two-node SLURM cluster."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from awm import cli
from awm.acquire import clean
from awm.imageio import decode_image, encode_image
from awm.shardio.read import iter_tar
from awm.shardwrite import list_shards, read_index

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from booru_server import BooruServer  # noqa: E402
from support import wait_for  # noqa: E402

RATE = 25.0


def tiny(seed: int) -> np.ndarray:
    """A 64x48 image of smooth random blocks: cheap, and far apart in perceptual hash from the others."""
    rng = np.random.default_rng(seed)
    return cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), (64, 48), interpolation=cv2.INTER_LINEAR)


def build(srv: BooruServer, n_posts: int, every: int, parts: int) -> tuple[set[int], dict[int, tuple[str, int]]]:
    """``n_posts`` posts listed (metadata for all); every ``every``-th has an image, the rest are
    deleted or too small (decided from metadata, never downloaded). Planted exact and near
    duplicates pair a newer post (the winner: first in listing order) with an older one, within one
    part and across parts. Returns (ids to keep, {older id: (reason, newer id)})."""
    eligible = list(range(n_posts, 0, -every))
    dups: dict[int, tuple[str, int]] = {}
    pairs = []  # (newer, older, kind): cross-part pairs need families of different residues
    for k in range(12):  # the next eligible post is in another part, the 4th next in the same one
        a, b = eligible[6 * k], eligible[6 * k + (1 if k % 2 == 0 else parts)]
        pairs.append((a, b, "duplicate_md5" if k % 4 < 2 else "near_duplicate"))
    images = {pid: tiny(pid) for pid in eligible}
    data = {pid: encode_image(img, "png") for pid, img in images.items()}
    for a, b, kind in pairs:
        if kind == "duplicate_md5":
            data[b] = data[a]
        else:
            brighter = np.clip(images[a].astype(np.int16) + 4, 0, 255).astype(np.uint8)  # other bytes, same picture
            data[b] = encode_image(brighter, "png")
            assert clean.hamming(clean.phash(images[a]), clean.phash(decode_image(data[b]))) <= 2
        dups[b] = (kind, a)
    assert {a % parts != b % parts for a, b, _ in pairs} == {True, False}  # within and across parts
    for pid in range(n_posts, 0, -1):
        if pid in data:
            srv.add_post(pid, data[pid], "png", width=64, height=48)
        else:
            fields = dict(status="deleted", file_url=None) if pid % 2 else dict(width=8, height=6)
            srv.add_post(pid, b"", **fields)
    return set(eligible) - set(dups), dups


def crawl_argv(url: str, out: Path, *extra: str) -> list[str]:
    return ["crawl", "--source", "konachan", "--base-url", url, "--out", str(out), "--rate", str(RATE),
            "--workers", "8", "--shard-size", "8", "--min-side", "16", "--timeout", "5", "--backoff", "0.05",
            "--retries", "4", "--no-progress", *extra]


def merged_samples(out: Path) -> dict[int, dict]:
    samples: dict[int, dict] = {}
    for shard in list_shards(out, "raw-"):
        for s in iter_tar(shard):
            pid = int(s["__key__"])
            assert pid not in samples, f"{pid} twice"
            samples[pid] = s
    return samples


def recorded_duplicates(out: Path) -> dict[int, tuple[str, int]]:
    """Every dedup skip of every part state (within a part at crawl time, across parts by the merge)."""
    found: dict[int, tuple[str, int]] = {}
    for path in out.glob("crawl_state-*.sqlite"):
        with sqlite3.connect(path) as db:
            for pid, reason, of in db.execute("SELECT id, reason, dup_of FROM posts WHERE reason IN "
                                              "('duplicate_md5', 'near_duplicate')"):
                found[pid] = (reason, of)
        db.close()
    return found


def max_in_window(times: list[float], window: float = 2.0) -> int:
    times = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] < t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


def check_result(srv: BooruServer, out: Path, keep: set[int], dups: dict[int, tuple[str, int]],
                 pages: int, extra_page_requests: int) -> None:
    samples = merged_samples(out)
    assert set(samples) == keep
    md5s = [json.loads(s["json"])["md5"] for s in samples.values()]
    assert len(set(md5s)) == len(md5s)
    hashes = [int(json.loads(s["json"])["phash"], 16) for s in samples.values()]
    assert min(clean.hamming(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1:]) > 4
    assert recorded_duplicates(out) == dups
    index = read_index(out)
    assert index["nsamples"] == len(keep) == sum(e["nsamples"] for e in index["shardlist"])
    assert index["skipped"]["duplicate_md5"] + index["skipped"]["near_duplicate"] == len(dups)
    listing = [q for _, p, q in srv.queries if p == "/post.json"]
    assert len(list((out / "listing").glob("page-*.json.gz"))) == pages
    assert pages <= len(listing) <= pages + extra_page_requests, len(listing)
    assert len(set(listing)) == pages  # no page asked for twice but to retry it
    assert max_in_window([t for t, _, _ in srv.queries]) <= 2 * RATE * 1.1


@pytest.mark.slow
def test_array_crawl_lists_once_within_one_rate_and_dedups_across_parts(tmp_path):
    out, logs = tmp_path / "out", tmp_path / "logs"
    n_posts, parts = 20_000, 4
    with BooruServer() as srv:
        keep, dups = build(srv, n_posts, every=151, parts=parts)
        srv.page_faults("", "", "503", "", "429:1")  # two listing retries
        argv = ["submit", *crawl_argv(srv.url, out), "--array", str(parts), "--profile", "local",
                "--set", f"log_dir={logs}"]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen([sys.executable, "-m", "awm", *argv], env=env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: proc.poll() is not None or (len(list((out / "listing").glob("page-*"))) >= 60
                                                      and list(out.glob("raw-*.tar"))),
                 "60 listing pages and a first shard", poll_s=0.05)
        assert proc.poll() is None, "the crawl ended before it could be killed mid-way"
        os.killpg(proc.pid, signal.SIGKILL)  # the submitter and every part, at once
        proc.wait()
        assert cli.main(argv) == 0  # a new submission into the same folder resumes every part
        pages = n_posts // 100 + 1  # + the empty page that ends the listing
        check_result(srv, out, keep, dups, pages, extra_page_requests=2 + 1)  # retries, + 1 cut by the kill
        record = json.loads(next(p for p in sorted(logs.glob("crawl-*")) if (p / "merged.json").is_file())
                            .joinpath("merged.json").read_text())
        assert record["dedup"]["dropped"] >= sum(a % parts != b % parts for b, (_, a) in dups.items())


@pytest.mark.slurm
def test_array_crawl_on_two_slurm_nodes(slurm_cluster, tmp_path):
    """4 parts on n1 and n2 (separate network namespaces) share one listing and one --rate through
    the output folder; the server listens on the cluster bridge."""
    out, logs = tmp_path / "out", tmp_path / "logs"
    host = os.environ.get("SLURM_NET", "10.213.7") + ".1"
    with BooruServer(host=host) as srv:
        keep, dups = build(srv, 3000, every=39, parts=4)
        argv = ["submit", *crawl_argv(srv.url, out), "--array", "4", "--profile", "cpu-test",
                "--set", f"log_dir={logs}", "--wait"]
        assert cli.main(argv) == 0
        check_result(srv, out, keep, dups, 31, extra_page_requests=0)
        hosts = {json.loads(p.read_text())["host"] for p in logs.glob("crawl-*/parts/part-*.json")}
        assert hosts == {"n1", "n2"}

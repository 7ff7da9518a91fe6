"""`awm crawl` against a real HTTP server on 127.0.0.1 that injects every fault we handle."""

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from awm.acquire import merge
from awm.cli import main
from awm.data.synth import generate
from awm.imageio import encode_image, sniff_format
from awm.shardio.read import iter_tar
from awm.shardwrite import list_shards, read_index

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from booru_server import BooruServer, build_scenario, png  # noqa: E402
from support import wait_for  # noqa: E402

FAST = ["--rate", "0", "--workers", "3", "--shard-size", "4", "--page-size", "7", "--min-side", "40",
        "--timeout", "0.4", "--backoff", "0.01", "--backoff-max", "0.05", "--retries", "3", "--no-progress"]
JSON_KEYS = {"id", "source", "tags", "rating", "width", "height", "md5", "file_url", "parent_id", "score",
             "fetched_at"}


def crawl_args(srv: BooruServer, out: Path, *extra: str, source: str = "konachan") -> list[str]:
    return ["crawl", "--source", source, "--base-url", srv.url, "--tags", "wallpaper", "--out", str(out),
            *FAST, *extra]


def read_samples(out: Path) -> dict[int, dict]:
    """All samples of all complete shards; fails on a key seen twice."""
    samples: dict[int, dict] = {}
    for shard in list_shards(out, "raw-"):
        for s in iter_tar(shard):
            pid = int(s["__key__"])
            assert pid not in samples, f"{pid} twice"
            samples[pid] = s
    return samples


def skip_reasons(out: Path, part: str = "0of1") -> dict[int, str]:
    with sqlite3.connect(out / f"crawl_state-{part}.sqlite") as db:
        return dict(db.execute("SELECT id, reason FROM posts WHERE status='skipped'").fetchall())


def assert_clean(out: Path) -> None:
    """Nothing partial: no temp files, an empty spool, every shard with its stats."""
    leftovers = [p.name for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers
    assert all(not any(d.iterdir()) for d in out.glob("crawl_spool-*"))
    for shard in list_shards(out, "raw-"):
        assert shard.with_name(shard.stem + "_stats.json").is_file()


def test_full_crawl_survives_every_fault(tmp_path):
    out = tmp_path / "out"
    with BooruServer() as srv:
        keep, skip = build_scenario(srv)
        srv.page_faults("429:1", "500", "", "reset", "badjson", "", "503")
        assert main(crawl_args(srv, out)) == 0
        samples = read_samples(out)
        assert set(samples) == keep
        for pid, s in samples.items():
            meta = json.loads(s["json"])
            ext = next(k for k in s if k not in ("__key__", "__url__", "json"))
            assert ext == sniff_format(s[ext])
            assert hashlib.md5(s[ext]).hexdigest() == meta["md5"] == srv.posts[pid]["md5"]
            assert set(meta) >= JSON_KEYS and meta["id"] == pid and meta["source"] == "konachan"
        assert "jpg" in samples[278] and "png" not in samples[278]  # file_ext lied; bytes decide
        assert json.loads(samples[252]["json"])["parent_id"] == 250
        assert skip_reasons(out) == skip
        index = read_index(out)
        assert index["nsamples"] == len(keep) and index["crawl"]["status"] == "complete"
        expected = Counter(skip.values()) + Counter({"bad_metadata": 2})  # + the entries without id
        assert index["crawl"]["skipped"] == dict(expected)
        assert sum(index["skipped"].values()) == len(skip)  # per-shard stats cover every skip by id
        named = {int(i): r for r, ids in index["skipped_names"].items() for i in ids}
        assert named == skip == {int(i): r for r, ids in index["crawl"]["skipped_names"].items() for i in ids}
        t = srv.times("/data/300.png")
        assert len(t) == 2 and t[1] - t[0] >= 0.95  # Retry-After: 1 honoured
        assert srv.count("/data/294.png") == 4  # reset, 500, truncate, then success
        assert not any(p.startswith("/jpeg/") for _, p in srv.requests)  # never a re-encode
        assert_clean(out)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]

        before = {p.name: p.read_bytes() for p in list_shards(out, "raw-")}
        n_requests = len(srv.requests)
        assert main(crawl_args(srv, out)) == 0  # finished crawl: a re-run is a no-op
        assert len(srv.requests) == n_requests
        assert {p.name: p.read_bytes() for p in list_shards(out, "raw-")} == before
        assert main(crawl_args(srv, out, "--variants", "all")) == 2  # other arguments: refused


def test_parts_cover_the_set_without_overlap(tmp_path):
    out = tmp_path / "out"
    with BooruServer() as srv:
        keep, _ = build_scenario(srv)
        assert main(crawl_args(srv, out, "--part", "0/2")) == 0
        first = set(read_samples(out))
        assert main(crawl_args(srv, out, "--part", "1/2")) == 0
        samples = read_samples(out)  # asserts no key twice
        assert set(samples) == keep and first and first != keep
        names = [p.name for p in list_shards(out, "raw-")]
        assert {int(n[4:10]) % 2 for n in names} == {0, 1}
        assert read_index(out)["nsamples"] == len(keep)


def test_danbooru_dialect_and_ratings(tmp_path):
    out = tmp_path / "out"
    with BooruServer() as srv:
        for pid, rating in zip(range(20, 10, -1), "ggsgqgegsg", strict=True):
            srv.add_post(pid, png(pid), width=72, height=48, rating=rating)
        srv.posts[19].update(status="deleted", file_url=None)
        args = crawl_args(srv, out, "--page-size", "2", source="danbooru")
        assert main(args) == 0
        assert set(read_samples(out)) == {20, 17, 15, 13, 11}  # rating g only (Danbooru's safe)
        assert skip_reasons(out) == {19: "deleted"}
        assert all(p.startswith(("/posts.json", "/data/")) for _, p in srv.requests)
        out2 = tmp_path / "out2"
        assert main(crawl_args(srv, out2, "--rating", "g,s", source="danbooru")) == 0
        assert set(read_samples(out2)) == {20, 18, 17, 15, 13, 12, 11}
        assert skip_reasons(out2) == {19: "deleted", 16: "rating", 14: "rating"}


def test_limit_keeps_the_newest_eligible(tmp_path):
    out = tmp_path / "out"
    with BooruServer() as srv:
        for pid in range(40, 30, -1):
            srv.add_post(pid, png(pid), width=72, height=48)
        srv.posts[39]["status"] = "deleted"
        assert main(crawl_args(srv, out, "--limit", "5")) == 0
        assert set(read_samples(out)) == {40, 38, 37, 36, 35}
        assert main(crawl_args(srv, out, "--limit", "7")) == 0  # raising the limit continues
        assert set(read_samples(out)) == {40, 38, 37, 36, 35, 34, 33}


def test_listing_failure_exits_then_resumes(tmp_path, caplog):
    out = tmp_path / "out"
    with BooruServer() as srv:
        for pid in range(30, 20, -1):
            srv.add_post(pid, png(pid), width=72, height=48)
        srv.page_faults("", "", "500", "500", "500", "500")  # 3rd page fails past --retries 3
        assert main(crawl_args(srv, out, "--page-size", "3")) == 1
        assert read_index(out)["crawl"]["status"] == "incomplete"
        assert main(crawl_args(srv, out, "--page-size", "3")) == 0
        assert set(read_samples(out)) == set(range(30, 20, -1))
        assert_clean(out)


@pytest.mark.slow
def test_sigkill_mid_shard_then_resume_gives_exact_set(tmp_path):
    out, cwd = tmp_path / "out", tmp_path / "cwd"
    cwd.mkdir()
    env = {**os.environ, "HOME": str(cwd), "TMPDIR": str(cwd), "OMP_NUM_THREADS": "1"}
    with BooruServer(file_delay=0.06) as srv:
        keep, skip = build_scenario(srv)
        cmd = [sys.executable, "-m", "awm", *crawl_args(srv, out, "--workers", "2")]

        def run_until(ready) -> int | None:
            """Run the crawl, SIGKILL it once ``ready()`` (polled on the output folder, however long
            a loaded machine takes to get there); the exit code (0 if it ended first)."""
            proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_for(lambda: proc.poll() is not None or ready(), "the crawl's state to kill it in", poll_s=0.01)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            return proc.wait()

        shards = lambda: len(list(out.glob("raw-*_stats.json")))  # noqa: E731
        # 1: killed right after the first shard completes (the next one is being filled);
        # 2: killed as soon as the next shard appears (maybe between its rename and its record).
        assert run_until(lambda: shards() >= 1) == -signal.SIGKILL
        n = shards()
        assert run_until(lambda: (out / f"raw-{n:06d}.tar").exists()) == -signal.SIGKILL
        assert run_until(lambda: False) == 0
    samples = read_samples(out)
    assert set(samples) == keep
    assert skip_reasons(out) == skip
    assert read_index(out)["nsamples"] == len(keep)
    assert_clean(out)
    assert not any(cwd.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "out"]


def test_a_crawl_imports_neither_torch_nor_webdataset(tmp_path):
    """A whole crawl (listing, downloads, checks, shards, the merge step, the index) runs without
    torch: importing it (webdataset does) costs ~0.4 GB of memory and a second of start-up per crawl
    process, what img2dataset, the peer it is measured against, does not pay."""
    with BooruServer() as srv:
        for pid in range(12, 2, -1):
            srv.add_post(pid, png(pid), width=72, height=48)
        code = ("import sys\nfrom awm.cli import main\n"
                f"rc = main({crawl_args(srv, tmp_path / 'out')!r})\n"
                "print('rc', rc, 'imported:', *(m for m in ('torch', 'webdataset') if m in sys.modules))")
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert r.stdout.splitlines()[-1:] == ["rc 0 imported:"], r.stdout[-500:] + r.stderr[-2000:]
    assert set(read_samples(tmp_path / "out")) == set(range(12, 2, -1))


def test_nothing_kept_exits_1(tmp_path):
    with BooruServer() as srv:
        for pid in (3, 2, 1):
            srv.add_post(pid, png(pid), width=72, height=48)
            srv.posts[pid].update(status="deleted", file_url=None)
        assert main(crawl_args(srv, tmp_path / "out")) == 1  # every post listed is skipped
        assert skip_reasons(tmp_path / "out") == {3: "deleted", 2: "deleted", 1: "deleted"}


def test_curation_and_dedup_against_an_ingested_folder(tmp_path):
    """--max-per-tag (balanced over --balance-tags), --min-jpeg-quality and --min-complexity are
    recorded skips; a crawl merged against an ingest folder drops the pictures that folder has,
    naming the id they duplicate and its folder; the merge runs again as a no-op."""
    local, ingested, out = tmp_path / "local", tmp_path / "ingested", tmp_path / "out"
    local.mkdir()
    (local / "a.png").write_bytes(png(60))  # the same bytes as post 60
    (local / "b.png").write_bytes(encode_image(np.clip(generate(58, 72, 48).astype(np.int16) + 3, 0, 255)
                                               .astype(np.uint8), "png"))  # post 58, a shade brighter
    assert main(["ingest", str(local), "--out", str(ingested), "--no-progress"]) == 0
    with BooruServer() as srv:
        tags = {60: "wallpaper a", 59: "wallpaper a", 58: "wallpaper a b", 57: "wallpaper a",
                56: "wallpaper a b", 55: "wallpaper b", 54: "wallpaper b c"}
        for pid, t in tags.items():
            srv.add_post(pid, png(pid), width=72, height=48, tags=t)
        srv.add_post(53, encode_image(generate(53, 72, 48), "jpg", 30), "jpg", width=72, height=48, tags="wallpaper c")
        srv.add_post(52, encode_image(np.full((48, 72, 3), 90, np.uint8), "png"), width=72, height=48,
                     tags="wallpaper c")
        args = crawl_args(srv, out, "--max-per-tag", "2", "--balance-tags", "a b", "--min-jpeg-quality", "50",
                          "--min-complexity", "0.005", "--dedup-against", str(ingested))
        assert main(args) == 0
    # a: 60, 59 fill it; 58 counts for b (b: 58, 56); 57 (a only) and 55 (b only) are over quota;
    # 54 has c, which is not balanced: b is full, c does not count -> over quota.
    reasons = skip_reasons(out)
    assert {k: reasons[k] for k in (57, 55, 54, 53, 52)} == {
        57: "tag_quota", 55: "tag_quota", 54: "tag_quota", 53: "low_jpeg_quality", 52: "low_complexity"}
    assert set(read_samples(out)) == {59, 56}  # 60 and 58 are in the ingested folder
    record = json.loads((out / "dedup.json").read_text())["dropped"]
    assert {int(k): (r["reason"], r["of_folder"]) for k, r in record.items()} == {
        60: ("duplicate_md5", str(ingested)), 58: ("near_duplicate", str(ingested))}
    with sqlite3.connect(out / "crawl_state-0of1.sqlite") as db:
        assert dict(db.execute("SELECT id, status FROM posts WHERE id IN (60, 58)").fetchall()) == {
            60: "dropped", 58: "dropped"}
    db.close()
    index = read_index(out)
    assert index["nsamples"] == 2 and index["skipped"]["duplicate_md5"] == 1
    assert index["crawl"]["kept"] == 2
    meta = json.loads(read_samples(out)[59]["json"])
    assert set(meta) >= {"phash", "complexity", "jpeg_quality"} and meta["jpeg_quality"] is None
    before = {p.name: p.read_bytes() for p in out.glob("raw-*")}
    assert merge.dedup(out, 4, [ingested])["new"] == 0
    assert {p.name: p.read_bytes() for p in out.glob("raw-*")} == before
    (local / "c.png").write_bytes(png(59))  # and the other way round: an ingest after the crawl
    assert main(["ingest", str(local), "--out", str(tmp_path / "ingest2"), "--dedup-against", str(out),
                 "--no-progress"]) == 0
    (r,) = json.loads((tmp_path / "ingest2" / "dedup.json").read_text())["dropped"].values()
    assert (r["reason"], r["of"]) == ("duplicate_md5", 59) and read_index(tmp_path / "ingest2")["nsamples"] == 2

"""`awm crawl` against the real img2dataset, same local Moebooru-compatible server, same files.

Wallpaper-sized originals (1920x1080 and 2560x1440, half PNG, half JPEG q95; generated anime-style
pictures upscaled with per-image grain, cached under ~/.cache/awm-bench) are served by
tests/integration/booru_server.py. Both tools run as their own command-line processes with 4
parallel downloads, no rate limit, 100 samples per shard, and must keep every original
byte-exact (checked: the md5 of every image in their output tars against the served files):

- awm: ``awm crawl --workers 4 --rate 0`` (lists the API pages, verifies md5/size, probes the
  header, decodes, hashes, dedups, writes raw shards);
- img2dataset 1.47.0 (``--processes_count 1 --thread_count 4 --output_format webdataset``) on
  the list of the same file URLs, in its own venv made from the package index on first use under
  ~/.cache/awm-bench (the benchmark says why and stops when that is impossible). Two ways to keep
  originals: ``nodecode`` (``--disable_all_reencoding``: bytes copied unchecked, one job) and
  ``decode`` (``--resize_mode no --skip_reencode``, decoding each image; one job per source
  format since ``--encode_format`` is one format, run back to back, times summed).

Rounds interleave the tools (order rotated); each figure is the median over rounds; the awm/peer
ratios are medians of per-round pairs. CPU = user + system of the process tree (wait4), RSS = the
largest process's peak, writes = block writes reported by the kernel for the tree. Scenarios: a
30 ms per-file server latency (closer to a real site) and plain loopback.
Prints one JSON object last.

    .venv/bin/python tests/benchmarks/bench_crawl.py [--images 96] [--rounds 3] [--latencies 30,0]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from booru_server import BooruServer  # noqa: E402
from peers import CACHE, PeerUnavailable, peer_venv  # noqa: E402

from awm.data.synth import generate  # noqa: E402

I2D_VERSION = "1.47.0"
SIZES = ((1920, 1080), (2560, 1440))


def img2dataset() -> Path:
    """The img2dataset executable of its own venv, made on first use (SystemExit with the reason)."""
    try:
        return peer_venv(f"img2dataset-{I2D_VERSION}", [[f"img2dataset=={I2D_VERSION}"]]) / "img2dataset"
    except PeerUnavailable as e:
        raise SystemExit(f"bench_crawl: {e} (no package index?)") from None


def originals(n: int) -> list[tuple[bytes, str, int, int]]:
    """``n`` distinct wallpaper originals (bytes, ext, width, height), cached."""
    d = CACHE / "crawl-originals-v1"
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        w, h = SIZES[i % 2]
        ext = "png" if i % 4 < 2 else "jpg"
        f = d / f"{i:05d}.{ext}"
        if not f.exists():
            rng = np.random.default_rng(i)
            img = cv2.resize(generate(5000 + i, w // 4, h // 4), (w, h), interpolation=cv2.INTER_CUBIC)
            img = np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)
            bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
            ok, buf = cv2.imencode(f".{ext}", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95] if ext == "jpg" else [])
            tmp = f.with_suffix(".tmp")
            tmp.write_bytes(buf.tobytes())
            tmp.replace(f)
        out.append((f.read_bytes(), ext, w, h))
    return out


# Starts the command from a fresh small process and prints its rusage: a child's peak RSS starts at
# its parent's RSS at fork time (kept across exec), and this benchmark's process holds the originals.
_LAUNCHER = """
import json, os, subprocess, sys, time
t = time.perf_counter()
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
err = p.stderr.read()
_, status, ru = os.wait4(p.pid, 0)
print(json.dumps({"rc": os.waitstatus_to_exitcode(status), "wall_s": time.perf_counter() - t,
                  "cpu_s": ru.ru_utime + ru.ru_stime, "rss_mb": ru.ru_maxrss / 1024,
                  "written_mb": ru.ru_oublock * 512 / 1e6, "err": err.decode(errors="replace")[-2000:]}))
"""


def run(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    """Wall, CPU (process tree), peak RSS (largest process) and block writes of one command."""
    p = subprocess.run([sys.executable, "-c", _LAUNCHER, *cmd], capture_output=True, text=True, env=env)
    r = json.loads(p.stdout)
    if r.pop("rc") or p.returncode:
        raise SystemExit(f"{' '.join(cmd[:3])} ... failed: {r['err']}{p.stderr[-2000:]}")
    del r["err"]
    return r


def image_md5s(folder: Path) -> list[str]:
    out = []
    for tar in sorted(folder.rglob("*.tar")):
        with tarfile.open(tar) as t:
            for m in t.getmembers():
                if m.isfile() and m.name.rsplit(".", 1)[-1].lower() in ("png", "jpg", "jpeg", "webp"):
                    out.append(hashlib.md5(t.extractfile(m).read()).hexdigest())
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--latencies", default="30,0", help="per-file server delays in ms, one scenario each")
    ap.add_argument("--peers", default="nodecode,decode", help="img2dataset variants: nodecode, decode")
    a = ap.parse_args()
    exe = img2dataset()
    files = originals(a.images)
    want = sorted(hashlib.md5(d).hexdigest() for d, *_ in files)
    peers = a.peers.split(",")
    root = Path(tempfile.mkdtemp(prefix="bench_crawl_"))
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "OMP_NUM_THREADS": "1"}
    common = ["--processes_count", "1", "--thread_count", str(a.workers), "--output_format", "webdataset",
              "--number_sample_per_shard", "100", "--compute_hash", "md5", "--enable_wandb", "False",
              "--timeout", "60", "--retries", "0", "--extract_exif", "False"]
    result: dict = {"images": a.images, "sizes": "1920x1080 / 2560x1440", "workers": a.workers, "rounds": a.rounds,
                    "mb_total": round(sum(len(d) for d, *_ in files) / 1e6, 1), "img2dataset_version": I2D_VERSION,
                    "peers": peers, "scenarios": []}
    try:
        for latency in (float(ms) / 1000 for ms in a.latencies.split(",")):
            with BooruServer(file_delay=latency) as srv:
                lists: dict[str, Path] = {}
                for i, (data, ext, w, h) in enumerate(files):
                    srv.add_post(100_000 - i, data, ext, width=w, height=h)
                for ext in ("png", "jpg", "all"):
                    lists[ext] = root / f"urls-{ext}.txt"
                    lists[ext].write_text("".join(p["file_url"] + "\n" for p in srv.posts.values()
                                                  if ext == "all" or p["file_url"].endswith(ext)))

                def awm(srv: BooruServer = srv) -> dict[str, float]:
                    out = root / "awm"
                    shutil.rmtree(out, ignore_errors=True)
                    r = run([sys.executable, "-m", "awm", "crawl", "--source", "konachan", "--base-url", srv.url,
                             "--out", str(out), "--rate", "0", "--workers", str(a.workers), "--no-progress"], env)
                    assert sorted(image_md5s(out)) == want, "awm: originals not kept byte-exact"
                    return r

                def i2d(variant: str, lists: dict[str, Path] = lists) -> dict[str, float]:
                    out = root / f"i2d-{variant}"
                    shutil.rmtree(out, ignore_errors=True)
                    if variant == "nodecode":
                        jobs = [(lists["all"], ["--disable_all_reencoding", "True"])]
                    else:
                        jobs = [(lists[ext], ["--resize_mode", "no", "--skip_reencode", "True", "--encode_format", ext,
                                 "--encode_quality", "9" if ext == "png" else "95"])
                                for ext in ("png", "jpg")]
                    tot: dict[str, float] = {}
                    for k, (urls, extra) in enumerate(jobs):
                        r = run([str(exe), str(urls), "--output_folder", str(out / str(k)), *common, *extra], env)
                        for key, v in r.items():
                            tot[key] = max(tot.get(key, 0), v) if key == "rss_mb" else tot.get(key, 0) + v
                    assert sorted(image_md5s(out)) == want, f"img2dataset {variant}: originals not kept byte-exact"
                    return tot

                sides = {"awm": awm, **{f"img2dataset_{v}": (lambda v=v: i2d(v)) for v in peers}}
                names = list(sides)
                runs: dict[str, list[dict[str, float]]] = {k: [] for k in names}
                for r in range(a.rounds):
                    for k in names[r % len(names):] + names[:r % len(names)]:
                        runs[k].append(sides[k]())
                        print(f"latency {latency * 1000:.0f} ms round {r} {k}: {runs[k][-1]}", flush=True)
            sc: dict = {"latency_ms": round(latency * 1000)}
            for k, rs in runs.items():
                sc[k] = {"images_per_s": statistics.median(a.images / x["wall_s"] for x in rs),
                         "cpu_ms_per_image": statistics.median(1000 * x["cpu_s"] / a.images for x in rs),
                         "rss_mb": statistics.median(x["rss_mb"] for x in rs),
                         "written_mb": statistics.median(x["written_mb"] for x in rs)}
            for v in peers:
                pairs = [p["wall_s"] / q["wall_s"] for p, q in zip(runs[f"img2dataset_{v}"], runs["awm"], strict=True)]
                sc[f"ratio_vs_{v}"] = {
                    "images_per_s": statistics.median(pairs), "images_per_s_min": min(pairs),
                    "images_per_s_max": max(pairs),
                    "cpu_per_image": statistics.median(q["cpu_s"] / p["cpu_s"] for p, q in zip(runs[f"img2dataset_{v}"], runs["awm"], strict=True)),
                    "rss": sc["awm"]["rss_mb"] / sc[f"img2dataset_{v}"]["rss_mb"]}
            result["scenarios"].append(sc)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

"""Crawler throughput against the local test server, no rate limit (run by hand).

Compares `awm crawl` with --workers 1 and 4 to the floor a user could write in ten lines: 4
threads downloading the same files through one `requests.Session` each (keep-alive), nothing
else, in the same run; and to an img2dataset-style downloader doing the same work as the crawler's
core (4 threads: download, md5, full decode, samples written in order into a tar by the main
thread, as img2dataset's downloader/writer do, without its resize) at equal workers and latency.
CPU seconds (user + system, this process) per kept image give images/s per core. The crawler also lists pages, verifies md5/size, checks every image
(header probe, full decode, perceptual hash), spools and writes shards; that verification cost
is measured apart, in-process on the same bytes (`verification`), so the ratio to the loop shows
what the crawler costs over a bare download. The second scenario adds a per-file server latency,
closer to a real site. Prints one JSON object last (medians of --repeat).

    .venv/bin/python tests/benchmarks/bench_crawl.py [--images 48] [--size 768x432] [--repeat 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from booru_server import BooruServer  # noqa: E402

from awm.acquire import clean  # noqa: E402
from awm.acquire.crawl import CrawlConfig, crawl  # noqa: E402
from awm.data.synth import generate  # noqa: E402
from awm.imageio import encode_image  # noqa: E402


def session_loop(urls: list[str], threads: int = 4) -> tuple[float, int]:
    """The baseline: ``threads`` threads, one keep-alive Session each, download every URL."""
    local = threading.local()

    def get(u: str) -> int:
        if not hasattr(local, "s"):
            local.s = requests.Session()
        r = local.s.get(u, timeout=30)
        r.raise_for_status()
        return len(r.content)

    t = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        n = sum(pool.map(get, urls))
    return time.perf_counter() - t, n


def img2dataset_style(urls: list[str], out: Path, threads: int = 4) -> tuple[float, int]:
    """Download + md5 + decode in a thread pool, write each sample into one tar in order."""
    import io
    import tarfile

    import cv2
    import numpy as np

    local = threading.local()

    def work(u: str) -> tuple[str, bytes, str]:
        if not hasattr(local, "s"):
            local.s = requests.Session()
        r = local.s.get(u, timeout=30)
        r.raise_for_status()
        data = r.content
        if cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) is None:
            raise ValueError(u)
        return u.rsplit("/", 1)[1].split(".")[0], data, hashlib.md5(data).hexdigest()

    t = time.perf_counter()
    n = 0
    with ThreadPoolExecutor(threads) as pool, tarfile.open(out, "w") as tar:
        for key, data, md5 in pool.map(work, urls):
            for name, blob in ((f"{key}.img", data), (f"{key}.json", json.dumps({"md5": md5}).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
            n += len(data)
    return time.perf_counter() - t, n


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def verification(files: list[bytes]) -> float:
    """Seconds per file of what the crawler checks after a download: md5, size, image check + phash."""
    formats = clean.allowed_formats(webp=True)
    t = time.perf_counter()
    for data in files:
        hashlib.md5(data).hexdigest()
        clean.check_image(data, formats, 25_600_000, 0)
    return (time.perf_counter() - t) / len(files)


def crawler(srv: BooruServer, workers: int, root: Path) -> tuple[float, int, int, float]:
    out = root / f"w{workers}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = CrawlConfig(source="konachan", base_url=srv.url, out=out, rate=0, workers=workers,
                      shard_size=16, progress=False)
    t, c = time.perf_counter(), cpu_seconds()
    s = crawl(cfg)
    return time.perf_counter() - t, s["bytes"], s["kept"], cpu_seconds() - c


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--size", default="768x432")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--latency", type=float, default=0.03, help="per-file server delay, 2nd scenario")
    a = ap.parse_args()
    import webdataset  # noqa: F401 - the shard writer's import pulls in torch (seconds): not crawl work

    w, h = map(int, a.size.split("x"))
    files = [encode_image(generate(1000 + i, w, h), "png" if i % 2 else "jpg", None if i % 2 else 95) for i in range(a.images)]
    result: dict = {"images": a.images, "size": a.size, "mb": round(sum(map(len, files)) / 1e6, 2),
                    "cpus": os.cpu_count(), "repeat": a.repeat}
    root = Path(tempfile.mkdtemp(prefix="bench_crawl_"))
    try:
        for name, latency in (("loopback", 0.0), (f"latency_{int(a.latency * 1000)}ms", a.latency)):
            with BooruServer(file_delay=latency) as srv:
                for i, data in enumerate(files):
                    srv.add_post(10_000 - i, data, "png" if i % 2 else "jpg", width=w, height=h)
                urls = [p["file_url"] for p in srv.posts.values()]
                runs: dict[str, list[tuple[float, int]]] = {"session_loop_4_threads": [], "workers1": [],
                                                            "workers4": [], "img2dataset_style_4_threads": []}
                cpu: dict[str, list[float]] = {"workers4": [], "img2dataset_style_4_threads": []}
                for _ in range(a.repeat):
                    runs["session_loop_4_threads"].append(session_loop(urls))
                    c = cpu_seconds()
                    runs["img2dataset_style_4_threads"].append(img2dataset_style(urls, root / "i2d.tar"))
                    cpu["img2dataset_style_4_threads"].append(cpu_seconds() - c)
                    for k in (1, 4):
                        sec, nbytes, kept, used = crawler(srv, k, root)
                        assert kept == a.images, f"kept {kept} of {a.images}"
                        runs[f"workers{k}"].append((sec, nbytes))
                        if k == 4:
                            cpu["workers4"].append(used)
            row = {}
            for k, v in runs.items():
                sec = statistics.median(s for s, _ in v)
                row[k] = {"seconds": round(sec, 3), "downloads_per_s": round(a.images / sec, 1),
                          "mb_per_s": round(v[0][1] / 1e6 / sec, 2)}
            loop = row["session_loop_4_threads"]["downloads_per_s"]
            row["ratio_workers1_vs_loop"] = round(row["workers1"]["downloads_per_s"] / loop, 3)
            row["ratio_workers4_vs_loop"] = round(row["workers4"]["downloads_per_s"] / loop, 3)
            row["ratio_workers4_vs_workers1"] = round(row["workers4"]["downloads_per_s"]
                                                      / row["workers1"]["downloads_per_s"], 3)
            row["ratio_workers4_vs_img2dataset_style"] = round(
                row["workers4"]["downloads_per_s"] / row["img2dataset_style_4_threads"]["downloads_per_s"], 3)
            for k, used in cpu.items():
                row[k]["images_per_cpu_s"] = round(a.images / statistics.median(used), 1)
            result[name] = row
        per_file = statistics.median(verification(files) for _ in range(a.repeat))
        result["verification"] = {"ms_per_file": round(per_file * 1000, 2),
                                  "files_per_s_one_core": round(1 / per_file, 1),
                                  "what": "md5 + size + header probe, full decode, perceptual hash; in-process",
                                  "share_of_workers1_loopback": round(
                                      per_file * a.images / result["loopback"]["workers1"]["seconds"], 3)}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

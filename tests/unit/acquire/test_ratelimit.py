"""The crawl's shared rate limit: one schedule for every limiter on the same file (every part of a
crawl), listing requests ahead of downloads, Retry-After pausing everyone."""

import threading
import time

from awm.acquire.fetch import SharedRateLimiter


def _starts(limiters: list[SharedRateLimiter], per_thread: int, threads: int) -> list[float]:
    out: list[float] = []
    lock = threading.Lock()

    def run(lim: SharedRateLimiter) -> None:
        for _ in range(per_thread):
            lim.wait()
            with lock:
                out.append(time.time())

    ts = [threading.Thread(target=run, args=(lim,)) for lim in limiters for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sorted(out)


def test_limiters_on_one_file_share_one_rate(tmp_path):
    rate = 40.0
    lims = [SharedRateLimiter(rate, tmp_path / ".crawl_rate") for _ in range(3)]  # three "parts"
    starts = _starts(lims, per_thread=8, threads=2)
    assert len(starts) == 48
    assert starts[-1] - starts[0] >= 47 / rate * 0.95  # not 3x the rate
    for i in range(len(starts)):
        in_window = sum(1 for t in starts[i:] if t < starts[i] + 1.0)
        assert in_window <= rate + 4  # + a few late wake-ups bunched by a loaded machine
    for lim in lims:
        lim.close()


def test_hold_pauses_every_part_and_listing_goes_first(tmp_path):
    a, b = (SharedRateLimiter(20.0, tmp_path / ".crawl_rate") for _ in range(2))
    a.wait()
    a.hold(0.4)  # a Retry-After seen by part a
    t = time.time()
    b.wait()
    assert time.time() - t >= 0.35
    busy = threading.Event()

    def downloads() -> None:
        while not busy.is_set():
            b.wait()

    workers = [threading.Thread(target=downloads) for _ in range(6)]
    for w in workers:
        w.start()
    time.sleep(0.2)
    t = time.time()
    a.wait(priority=True)  # a listing page: the next free slot, not behind six waiting downloads
    waited = time.time() - t
    busy.set()
    for w in workers:
        w.join()
    assert waited <= 5 / 20.0  # the next slot or so (downloads poll; they hold no reservation)
    unlimited = SharedRateLimiter(0, tmp_path / "unused")
    unlimited.wait()
    assert not (tmp_path / "unused").exists()

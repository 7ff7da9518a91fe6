"""The crawl's shared rate limit: one schedule for every limiter on the same file (every part of a
crawl), listing requests ahead of downloads, Retry-After pausing everyone.

The limiters run on a virtual clock (``clock``/``sleep`` injected): the assertions are about the
schedule of request starts they hand out, which no load on the machine can change."""

import sys
import threading
from pathlib import Path

from awm.acquire.fetch import RateLimiter, SharedRateLimiter

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from support import wait_for  # noqa: E402


class VirtualClock:
    """Time that passes only when someone sleeps; ``frozen`` threads block in sleep until released."""

    def __init__(self, t: float = 1_000_000.0):
        self.t = t
        self.lock = threading.Lock()
        self.frozen: set[int] = set()
        self.release = threading.Event()
        self.sleepers = 0

    def __call__(self) -> float:
        with self.lock:
            return self.t

    def sleep(self, seconds: float) -> None:
        if threading.get_ident() in self.frozen:
            with self.lock:
                self.sleepers += 1
            self.release.wait()
        with self.lock:
            self.t += seconds


def _assert_spaced(starts: list[float], rate: float) -> None:
    """No two starts closer than 1/rate: at most ``rate`` starts in any 1 s window."""
    starts = sorted(starts)
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert min(gaps) >= 1 / rate * (1 - 1e-9), min(gaps)
    assert max(sum(1 for t in starts[i:] if t < s + 1.0) for i, s in enumerate(starts)) <= rate


def test_limiters_on_one_file_share_one_rate(tmp_path):
    rate, clock = 40.0, VirtualClock()
    lims = [SharedRateLimiter(rate, tmp_path / ".crawl_rate", clock, clock.sleep) for _ in range(3)]  # 3 "parts"
    starts: list[float] = []
    lock = threading.Lock()

    def run(lim: SharedRateLimiter) -> None:
        for _ in range(8):
            s = lim.wait()
            with lock:
                starts.append(s)

    threads = [threading.Thread(target=run, args=(lim,)) for lim in lims for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(starts)) == 48
    _assert_spaced(starts, rate)  # one schedule for all three, not three of 40/s
    for lim in lims:
        lim.close()


def test_a_limiter_alone_keeps_its_rate():
    clock = VirtualClock()
    lim = RateLimiter(20.0, clock, clock.sleep)
    _assert_spaced([lim.wait() for _ in range(30)], 20.0)


def test_hold_pauses_every_part_and_listing_goes_first(tmp_path):
    clock = VirtualClock()
    a, b = (SharedRateLimiter(20.0, tmp_path / ".crawl_rate", clock, clock.sleep) for _ in range(2))
    t0 = a.wait()
    a.hold(0.4)  # a Retry-After seen by part a
    assert b.wait() >= t0 + 0.4  # part b waits it out too

    # six downloads of part b find their next slot not due yet and wait (polling, no reservation)
    started: list[float] = []

    def download() -> None:
        clock.frozen.add(threading.get_ident())
        started.append(b.wait())

    workers = [threading.Thread(target=download) for _ in range(6)]
    for w in workers:
        w.start()
    wait_for(lambda: clock.sleepers == 6, "six downloads waiting for their slot", poll_s=0.01)
    now = clock()
    listing = a.wait(priority=True)  # a listing page: the next free slot, not behind six waiting downloads
    assert now <= listing <= now + 1 / 20.0
    clock.release.set()
    for w in workers:
        w.join()
    assert min(started) > listing
    _assert_spaced(started + [listing], 20.0)
    unlimited = SharedRateLimiter(0, tmp_path / "unused")
    assert unlimited.wait() == 0.0
    assert not (tmp_path / "unused").exists()

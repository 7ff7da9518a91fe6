"""A polite HTTP client for crawling: one rate limit shared by every worker thread (and, through a
file on the crawl's shared output folder, by every process of an array job),
bounded retries with exponential backoff and jitter, ``Retry-After``, a response size cap, a
whole-transfer deadline, and redirects followed by hand so they can only lead to http(s).

Failures are ``FetchError`` with a short ``reason`` that the crawler records as a skip reason.
"""

from __future__ import annotations

import fcntl
import os
import random
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import urljoin

import requests

from awm import __version__
from awm.acquire.booru import url_allowed

RETRY_STATUS = frozenset({408, 421, 425, 429, 500, 502, 503, 504, 520, 521, 522, 524})
USER_AGENT = f"awm/{__version__} (anime-wallpaper super-resolution dataset crawler)"


class FetchError(Exception):
    """A request that did not give usable bytes; ``retryable`` says whether trying again may help."""

    def __init__(self, reason: str, retryable: bool, retry_after: float | None = None, detail: str = ""):
        self.reason, self.retryable, self.retry_after = reason, retryable, retry_after
        super().__init__(f"{reason} {detail}".strip())


class RateLimiter:
    """At most ``rate`` request starts per second across all threads (``rate <= 0``: unlimited).

    ``hold`` pushes the next allowed start into the future for everyone: a 429 with Retry-After
    pauses the whole crawler, not only the worker that received it. ``clock``/``sleep`` are
    injectable so that tests check the schedule itself, not how a loaded machine kept it.
    """

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self._next = 0.0
        self._lock = threading.Lock()
        self._clock, self._sleep = clock, sleep

    def wait(self, priority: bool = False) -> float:
        """Block until this request's slot; returns the slot (a ``clock`` time)."""
        with self._lock:
            now = self._clock()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            self._sleep(start - now)
        return start

    def hold(self, seconds: float) -> None:
        with self._lock:
            self._next = max(self._next, self._clock() + seconds)


CLOCK_STEP_S = 3600.0  # a stored next start further ahead than this is a clock step, not a Retry-After


class SharedRateLimiter(RateLimiter):
    """``RateLimiter`` for many processes, possibly on several nodes: the next allowed start (a wall
    clock time) lives in a small file, read and advanced under ``flock``.

    Every request of every part of a crawl takes a slot of one schedule spaced ``1/rate`` apart
    (no burst allowance), so the site sees at most ``rate`` request starts per second from the
    whole job whatever the number of parts, however they are staggered, and a Retry-After received
    by one part pauses them all. A download claims a slot only once it is due (it polls), while a
    ``priority`` request (a listing page) reserves the next free slot at once: the listing, which
    every part waits on, never queues behind the downloads of all parts. Needs a file system whose
    ``flock`` works across nodes (local disks, NFSv4, Lustre mounted with ``flock``) and clocks
    kept in step by NTP (a skew of d seconds can let d*rate requests through early).
    """

    def __init__(self, rate: float, path: Path, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep):
        super().__init__(rate, clock, sleep)
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644) if self.interval else -1

    def _advance(self, update) -> tuple[float, float]:
        """``update(stored_next, now) -> (start, new_next)`` under the file lock; returns (start, start - now)."""
        with self._lock:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                raw = os.pread(self._fd, 8, 0)
                stored = struct.unpack("<d", raw)[0] if len(raw) == 8 else 0.0
                now = self._clock()
                if stored > now + CLOCK_STEP_S:  # the wall clock was stepped back: do not stall for it
                    stored = now
                start, new = update(stored, now)
                os.pwrite(self._fd, struct.pack("<d", new), 0)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        return start, start - now

    def wait(self, priority: bool = False) -> float:
        """Block until this request's slot; returns the slot (a ``clock`` time; 0 when unlimited)."""
        if not self.interval:
            return 0.0
        if priority:
            start, delay = self._advance(lambda nxt, now: (max(now, nxt), max(now, nxt) + self.interval))
            if delay > 0:
                self._sleep(delay)
            return start
        while True:
            start, delay = self._advance(lambda nxt, now: (nxt, nxt) if nxt > now else (now, now + self.interval))
            if delay <= 0:
                return start
            self._sleep(delay)

    def hold(self, seconds: float) -> None:
        if self.interval:
            self._advance(lambda nxt, now: (now, max(nxt, now + seconds)))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if absent/garbled."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


@dataclass
class FetchSettings:
    rate: float = 1.0
    retries: int = 5
    backoff: float = 1.0
    backoff_max: float = 60.0
    max_wait: float = 600.0
    timeout: float = 30.0
    max_redirects: int = 5


class HttpClient:
    """Thread-safe GETs (one ``requests.Session`` per thread) with the politeness rules above."""

    def __init__(self, settings: FetchSettings, seed: int | None = None, limiter: RateLimiter | None = None):
        self.s = settings
        self.limiter = limiter or RateLimiter(settings.rate)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self.counts = {"requests": 0, "retries": 0, "bytes_downloaded": 0}

    def _session(self) -> requests.Session:
        sess = getattr(self._local, "session", None)
        if sess is None:
            sess = self._local.session = requests.Session()
            sess.headers["User-Agent"] = USER_AGENT
        return sess

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[key] += n

    def backoff_delay(self, attempt: int) -> float:
        """Exponential backoff with "equal jitter": half fixed, half random, capped."""
        full = min(self.s.backoff_max, self.s.backoff * (2 ** attempt))
        with self._lock:
            return full / 2 + self._rng.uniform(0, full / 2)

    def get(self, url: str, max_bytes: int, params: dict[str, str] | None = None,
            check=None, priority: bool = False) -> bytes:
        """Body of ``url`` after up to ``retries`` retries; ``check(body)`` may raise a retryable
        FetchError (e.g. md5 mismatch) to have a corrupted transfer fetched again."""
        attempt = 0
        while True:
            try:
                data = self._get_once(url, max_bytes, params, priority)
                if check is not None:
                    check(data)
                return data
            except FetchError as e:
                if not e.retryable or attempt >= self.s.retries:
                    raise
                delay = self.backoff_delay(attempt)
                if e.retry_after is not None:
                    delay = max(delay, min(e.retry_after, self.s.max_wait))
                    self.limiter.hold(delay)
                self._count("retries")
                time.sleep(delay)
                attempt += 1

    def _get_once(self, url: str, max_bytes: int, params: dict[str, str] | None, priority: bool = False) -> bytes:
        for hop in range(self.s.max_redirects + 1):
            if not url_allowed(url):
                raise FetchError("bad_redirect" if hop else "bad_url", False, detail=url[:100])
            self.limiter.wait(priority)
            self._count("requests")
            try:
                r = self._session().get(url, params=params if hop == 0 else None, stream=True,
                                        allow_redirects=False, timeout=(self.s.timeout, self.s.timeout))
            except requests.Timeout:
                raise FetchError("timeout", True, detail=url) from None
            except requests.ConnectionError as e:
                raise FetchError("connection_error", True, detail=str(e)[:200]) from None
            except requests.RequestException as e:
                raise FetchError("request_error", False, detail=str(e)[:200]) from None
            with r:
                if r.is_redirect:
                    url = urljoin(r.url, r.headers["Location"])
                    continue
                code = r.status_code
                if code in RETRY_STATUS:
                    raise FetchError(f"http_{code}", True, parse_retry_after(r.headers.get("Retry-After")))
                if code != 200:
                    raise FetchError(f"http_{code}", False, detail=url)
                return self._read_body(r, max_bytes)
        raise FetchError("too_many_redirects", False, detail=url)

    def _read_body(self, r: requests.Response, max_bytes: int) -> bytes:
        length = r.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > max_bytes:
            raise FetchError("too_large", False, detail=f"Content-Length {length}")
        deadline = time.monotonic() + self.s.timeout * 10
        chunks, n = [], 0
        try:
            for chunk in r.iter_content(1 << 16):
                n += len(chunk)
                if n > max_bytes:
                    raise FetchError("too_large", False, detail=f"> {max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise FetchError("timeout", True, detail="transfer too slow")
                chunks.append(chunk)
        except (requests.exceptions.ChunkedEncodingError, requests.ConnectionError) as e:
            raise FetchError("truncated", True, detail=str(e)[:200]) from None
        except requests.Timeout:
            raise FetchError("timeout", True) from None
        except requests.exceptions.ContentDecodingError:
            raise FetchError("bad_encoding", True) from None
        self._count("bytes_downloaded", n)
        return b"".join(chunks)

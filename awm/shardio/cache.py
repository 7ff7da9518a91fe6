"""Remote shards (http(s), ``pipe:``) as local files: fetched whole into the cache, leased while
read, pruned to a bound, retried with backoff; :class:`ShardFetchError` names the URL when all
attempts fail. The cache's rules and environment variables are in :mod:`awm.shardio`."""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from awm.log import get_logger
from awm.shardio.ref import ShardRef, _name_of, is_remote

log = get_logger("awm.shardio")
CACHE_ENV = "AWM_SHARD_CACHE"
CACHE_MAX_ENV = "AWM_SHARD_CACHE_MAX"
RETRIES_ENV = "AWM_SHARD_RETRIES"
BACKOFF_ENV = "AWM_SHARD_BACKOFF"
_TIMEOUT_S = 60


class ShardFetchError(RuntimeError):
    """A shard or index could not be read after all retries; the message names the URL."""


class _Retry(Exception):
    """A transient failure worth another attempt (network fault, 5xx, short body, size change)."""


def cache_off() -> bool:
    return os.environ.get(CACHE_ENV, "").strip().lower() == "off"


def cache_limit() -> int | None:
    """``AWM_SHARD_CACHE_MAX`` in bytes (None: unbounded); an error names the variable."""
    text = os.environ.get(CACHE_MAX_ENV, "").strip().upper().removesuffix("B")
    if not text:
        return None
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(text[-1:], 1)
    digits = text[:-1] if scale > 1 else text
    try:
        value = float(digits) * scale
    except ValueError:
        raise ValueError(f"{CACHE_MAX_ENV}={os.environ[CACHE_MAX_ENV]!r}: a size like 50G, 800M or "
                         "a number of bytes") from None
    if value < 0:
        raise ValueError(f"{CACHE_MAX_ENV}={os.environ[CACHE_MAX_ENV]!r}: not negative")
    return int(value)


def cache_dir() -> Path:
    base = os.environ.get(CACHE_ENV)
    if base:
        return Path(base)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "awm" / "shards"


def _retries() -> tuple[int, float]:
    return int(os.environ.get(RETRIES_ENV, "5")), float(os.environ.get(BACKOFF_ENV, "1"))


def _http_get(url: str, out) -> None:
    import requests

    try:
        with requests.get(url, stream=True, timeout=_TIMEOUT_S) as r:
            if r.status_code >= 500 or r.status_code == 429:
                raise _Retry(f"HTTP {r.status_code}")
            if r.status_code != 200:
                raise ShardFetchError(f"{url}: HTTP {r.status_code} {r.reason}")
            want = r.headers.get("Content-Length")
            got = 0
            for chunk in r.iter_content(1 << 20):
                out.write(chunk)
                got += len(chunk)
            if want is not None and got != int(want):
                raise _Retry(f"truncated body: {got} of {want} bytes")
    except requests.RequestException as e:
        raise _Retry(f"{type(e).__name__}: {e}") from None


def _pipe_get(url: str, out) -> None:
    from webdataset.gopen import gopen

    stream = None
    try:
        stream = gopen(url, "rb")
        try:
            while chunk := stream.read(1 << 20):
                out.write(chunk)
        finally:
            stream.close()  # raises when the command's exit status is not 0
    except Exception as e:  # noqa: BLE001 - any failure of the command is worth a retry
        status = getattr(stream, "status", None)
        raise _Retry(f"command exited with status {status}" if status else f"{type(e).__name__}: {e}") from None


def _check_tar(path: Path, url: str, filesize: int | None) -> None:
    size = path.stat().st_size
    if filesize is not None and size != filesize:
        raise _Retry(f"size {size} bytes, the index says {filesize} (shard changed or body cut)")
    if size < 1024 or size % 512:
        raise _Retry(f"not a complete tar ({size} bytes)")
    with open(path, "rb") as f:
        f.seek(size - 1024)
        if f.read(1024).strip(b"\0"):
            raise _Retry("no end-of-archive blocks (truncated)")


def _attempts(url: str, once) -> Any:
    """``once()`` with retries and exponential backoff; ShardFetchError naming the URL at the end."""
    retries, backoff = _retries()
    for attempt in range(retries + 1):
        try:
            return once()
        except _Retry as e:
            if attempt == retries:
                raise ShardFetchError(f"{url}: {e} (gave up after {retries + 1} attempts)") from None
            delay = backoff * 2 ** attempt
            log.warning("%s: %s; retry %d/%d in %.2fs", url, e, attempt + 1, retries, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _download(url: str, dest: Path, check=None) -> None:
    """One attempt into a temp file beside ``dest``, checked, then renamed: never a partial ``dest``."""
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.part")
    try:
        with open(tmp, "wb") as f:
            (_pipe_get if url.startswith("pipe:") else _http_get)(url, f)
            f.flush()
            os.fsync(f.fileno())
        if check is not None:
            check(tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def fetch_bytes(url: str) -> bytes:
    """A small remote file (an index), fetched with retries and not cached (it may change)."""
    import io

    def once() -> bytes:
        buf = io.BytesIO()
        (_pipe_get if url.startswith("pipe:") else _http_get)(url, buf)
        return buf.getvalue()

    return _attempts(url, once)


def cache_path(url: str) -> Path:
    return cache_dir() / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}-{_name_of(url)}"


def _ref(ref: ShardRef | str | Path) -> ShardRef:
    return ref if isinstance(ref, ShardRef) else ShardRef(str(ref), _name_of(str(ref)))


_PINNED: dict[str, Any] = {}  # lease files of shards handed out by local_path: held until exit


def local_path(ref: ShardRef | str) -> Path:
    """A readable local file holding the shard: the path itself, or its cached copy (fetched once).

    A cached shard handed out here stays leased (never pruned) for the life of this process;
    readers that finish with shards one by one use :func:`lease` instead."""
    ref = _ref(ref)
    if not is_remote(ref.url):
        return Path(ref.url)
    if cache_off():
        raise ShardFetchError(f"{ref.url}: {CACHE_ENV}=off, and this stage needs the whole shard as a file; "
                              "set a cache folder (and a bound, AWM_SHARD_CACHE_MAX)")
    dest = cache_path(ref.url)
    if str(dest) in _PINNED:
        _fetch_into_cache(ref, dest)  # checked again: fetched anew if it went stale
    else:
        held = lease(ref)
        held.__enter__()
        _PINNED[str(dest)] = held
    return dest


@contextmanager
def lease(ref: ShardRef | str) -> Iterator[Path]:
    """A local file of the shard that stays in place (complete) until the context exits.

    Local shards are themselves. Cached ones: a shared lock on ``<shard>.lease`` is taken first,
    then the shard is fetched if missing, marked used (mtime) and the cache pruned to its bound.
    With the cache off: a private temporary copy, deleted at exit."""
    ref = _ref(ref)
    if not is_remote(ref.url):
        yield Path(ref.url)
        return
    if cache_off():
        fd, tmp = tempfile.mkstemp(prefix=".awm-shard-", suffix=".tar")
        os.close(fd)
        try:
            _attempts(ref.url, lambda: _download(ref.url, Path(tmp), lambda p: _check_tar(p, ref.url, ref.filesize)))
            yield Path(tmp)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return
    dest = cache_path(ref.url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.with_name(dest.name + ".lease"), "a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_SH)
        _fetch_into_cache(ref, dest)
        os.utime(dest)
        prune_cache(cache_limit())
        yield dest


def prune_cache(limit: int | None) -> int:
    """Delete least recently used cached shards until the cache holds at most ``limit`` bytes,
    skipping shards whose lease is held; returns the bytes left. Lock and lease files are never
    deleted (a process may be about to lock them)."""
    if limit is None:
        return -1
    files = []
    for p in cache_dir().glob("*.tar"):
        try:
            st = p.stat()
        except FileNotFoundError:  # pruned by another process meanwhile
            continue
        files.append((st.st_mtime, p, st.st_size))
    total = sum(size for _, _, size in files)
    for _, p, size in sorted(files):
        if total <= limit:
            break
        with open(p.with_name(p.name + ".lease"), "a") as held:
            try:
                fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # in use
            if p.is_file():
                p.unlink()
                total -= size
    if total > limit:
        log.debug("shard cache %s: %d bytes in use, above %s", cache_dir(), total, CACHE_MAX_ENV)
    return total


def _fetch_into_cache(ref: ShardRef, dest: Path) -> None:
    """The cached copy of ``ref`` complete under its name (fetched if missing or stale)."""
    with open(dest.with_name(dest.name + ".lock"), "w") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # ranks of one node: one downloads, the rest wait
        try:
            for stale in dest.parent.glob(f".{dest.name}.*.part"):  # a killed fetch's leftovers
                stale.unlink(missing_ok=True)
            if dest.is_file():
                try:
                    _check_tar(dest, ref.url, ref.filesize)
                    return
                except _Retry as e:
                    log.warning("cached %s of %s is stale (%s): fetching again", dest, ref.url, e)
                    dest.unlink()
            _attempts(ref.url, lambda: _download(ref.url, dest, lambda p: _check_tar(p, ref.url, ref.filesize)))
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)



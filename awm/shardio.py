"""Shard access for every stage: where shards are, fetching remote ones, and reading their samples.

A location is what a user writes for ``--in``/``--data``/``data.train``/``data.eval``:

- a local folder with ``index.json`` (or the path of an ``index.json``), as written by awm;
- an index URL, ``https://host/path/index.json``: relative shard urls resolve against it;
- a brace pattern, ``https://host/train-{000000..000099}.tar`` (or a local/``pipe:`` one);
- a ``pipe:COMMAND`` URL whose output is a shard (``pipe:aws s3 cp s3://b/train-000001.tar -``),
  a brace pattern of them, or one printing an ``index.json`` (its shard urls replace the index
  file's name in the command).

Remote shards (http(s), pipe:) are fetched whole into a cache folder before use
(``AWM_SHARD_CACHE``, default ``~/.cache/awm/shards``), so random access and re-reads cost
nothing and a stage never reads a half-sent stream. ``AWM_SHARD_CACHE_MAX`` (bytes, or with a
K/M/G/T suffix) bounds the cache: after each fetch the least recently used shards are deleted
until it fits, except shards in use. A reader holds a *lease* (a shared ``flock`` on
``<shard>.lease``) from before it looks for the file until it is done with it, and the pruner
deletes a shard only while holding that lock exclusively (non-blocking: a leased shard is
skipped), so no reader ever finds its shard missing or half-written. ``AWM_SHARD_CACHE=off``:
front-to-back readers (:func:`iter_tar`: validation, eval) stream each shard straight from its
URL, never storing it; random access (:class:`TarReader`: training) keeps a private temporary
copy only while the shard is open. A fetch writes a temp file, checks its size
(against ``Content-Length``, the index's ``filesize`` and the tar end-of-archive blocks) and
only then renames it into place, under a lock file, so the ranks of one node share one download
and no partial or corrupt file is ever under a cached name. Connection errors, 5xx/429, short
bodies, failing commands and size changes are retried with exponential backoff
(``AWM_SHARD_RETRIES``, default 5; ``AWM_SHARD_BACKOFF`` seconds, default 1), then
:class:`ShardFetchError` names the URL: a stage stops (exit 1), it never continues on less data.

Sample grouping (``<key>.<ext>`` members, consecutive, key = basename up to the first dot) is
:func:`group_members`, used by the front-to-back reader (:func:`iter_tar`, on webdataset's
``tar_file_iterator``) and the random-access index (:func:`index_samples`, :class:`TarReader` on
wids' memory-mapped tar index).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import struct
import tarfile
import tempfile
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urljoin, urlparse

from awm.log import get_logger

log = get_logger("awm.shardio")
CACHE_ENV = "AWM_SHARD_CACHE"
CACHE_MAX_ENV = "AWM_SHARD_CACHE_MAX"
RETRIES_ENV = "AWM_SHARD_RETRIES"
BACKOFF_ENV = "AWM_SHARD_BACKOFF"
INDEX_NAME = "index.json"
_TIMEOUT_S = 60
_BRACES = re.compile(r"\{[^{}]*\.\.[^{}]*\}|\{[^{}]*,[^{}]*\}")
_PLAIN_PATH = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._/-]*$")
T = TypeVar("T")


class ShardFetchError(RuntimeError):
    """A shard or index could not be read after all retries; the message names the URL."""


class _Retry(Exception):
    """A transient failure worth another attempt (network fault, 5xx, short body, size change)."""


def is_remote(location: str) -> bool:
    return location.startswith(("http://", "https://", "pipe:"))


def has_braces(location: str) -> bool:
    """A brace pattern (``{000000..000099}`` or ``{a,b}``), expanded as WebDataset does."""
    return bool(_BRACES.search(location))


# ---------------------------------------------------------------- sample grouping (the one place)

def split_name(name: str) -> tuple[str, str]:
    """``(key, ext)`` of a tar member: basename up to the first dot, lower-cased rest (WebDataset's rule)."""
    key, _, ext = os.path.basename(name).partition(".")
    return key, ext.lower()


def group_members(members: Iterable[tuple[str, T]], where: str = "") -> Iterator[tuple[str, dict[str, T]]]:
    """Consecutive members sharing a key as ``(key, {ext: value})``.

    A member repeated inside one sample is a malformed shard (webdataset refuses it too):
    ``tarfile.ReadError`` naming it, rather than silently keeping one of the two.
    """
    key, group = None, {}
    for name, value in members:
        k, ext = split_name(name)
        if k != key:
            if key is not None:
                yield key, group
            key, group = k, {}
        if ext in group:
            raise tarfile.ReadError(f"{where}: member {name} repeated within sample {k}")
        group[ext] = value
    if key is not None:
        yield key, group


# ---------------------------------------------------------------- locations

@dataclass(frozen=True)
class ShardRef:
    """One shard: ``url`` is a local path, an http(s) URL or a pipe: command."""

    url: str
    name: str
    nsamples: int | None = None
    filesize: int | None = None


@dataclass
class ShardSet:
    """The shards of a location in order, and its index (synthesised for a brace pattern)."""

    location: str
    shards: list[ShardRef]
    index: dict[str, Any] = field(default_factory=dict)

    def counted(self) -> ShardSet:
        """Every shard with its sample count (a brace pattern's shards are fetched and indexed)."""
        if all(s.nsamples is not None for s in self.shards):
            return self
        refs = [s if s.nsamples is not None else
                ShardRef(s.url, s.name, len(index_samples(local_path(s))), s.filesize) for s in self.shards]
        index = {**self.index, "shardlist": [{"url": r.url, "nsamples": r.nsamples} for r in refs],
                 "nshards": len(refs), "nsamples": sum(r.nsamples or 0 for r in refs)}
        return ShardSet(self.location, refs, index)


def _name_of(url: str) -> str:
    """The shard's file name: the URL path's basename, or for a pipe: the last token naming a .tar."""
    if url.startswith("pipe:"):
        tokens = [t for t in url[5:].split() if ".tar" in t]
        if tokens:
            return os.path.basename(urlparse(tokens[-1]).path or tokens[-1])
        return "pipe-" + hashlib.sha256(url.encode()).hexdigest()[:16] + ".tar"
    return os.path.basename(urlparse(url).path) if is_remote(url) else os.path.basename(url)


def _expand(pattern: str) -> list[str]:
    import braceexpand

    return list(braceexpand.braceexpand(pattern))


def resolve(location: str | Path) -> ShardSet:
    """The shards a location names (see the module doc); errors name the location."""
    loc = str(location).strip()
    if not loc:
        raise ValueError("empty shard location")
    if has_braces(loc):
        urls = _expand(loc)
        return ShardSet(loc, [ShardRef(u if is_remote(u) else str(Path(u).resolve()), _name_of(u)) for u in urls],
                        {"shardlist": [{"url": u} for u in urls]})
    names_index = (any(t.endswith(".json") for t in loc[5:].split()) if loc.startswith("pipe:")
                   else not loc.endswith(".tar"))
    if not names_index:
        url = loc if is_remote(loc) else str(Path(loc).resolve())
        return ShardSet(loc, [ShardRef(url, _name_of(loc))], {"shardlist": [{"url": url}]})
    if is_remote(loc):
        index_url = loc if loc.endswith(".json") or loc.startswith("pipe:") else loc.rstrip("/") + "/" + INDEX_NAME
        try:
            index = json.loads(fetch_bytes(index_url).decode())
        except ValueError as e:
            raise ValueError(f"{index_url}: not a JSON shard index ({e})") from None
        return _from_index(loc, index, lambda u: _join(index_url, u))
    p = Path(loc)
    index_path = p if p.suffix == ".json" else p / INDEX_NAME
    if not index_path.is_file():
        raise FileNotFoundError(f"{index_path} not found: is {loc} a shard folder written by awm "
                                "(or an index.json URL, a brace pattern of .tar URLs, a pipe: URL)?")
    index = json.loads(index_path.read_text())
    base = index_path.parent.resolve()
    return _from_index(loc, index, lambda u: u if is_remote(u) or os.path.isabs(u) else str(base / u))


def _join(index_url: str, url: str) -> str:
    """A shard url from an index fetched at ``index_url``.

    The index is data from elsewhere: it may name http(s) shards, but never a command (a pipe:
    url) and, for a pipe: index, only plain relative paths, which go into the user's command.
    """
    if url.startswith("pipe:"):
        raise ValueError(f"{index_url}: a fetched index may not name pipe: urls ({url!r})")
    if is_remote(url):
        return url
    if index_url.startswith("pipe:"):
        if not _PLAIN_PATH.match(url):
            raise ValueError(f"{index_url}: shard url {url!r} is not a plain relative path")
        names = [os.path.basename(t) for t in index_url[5:].split() if t.endswith(".json")]
        head, sep, tail = index_url.rpartition(names[-1]) if names else ("", "", "")
        if not sep:
            raise ValueError(f"{index_url}: cannot place relative shard url {url!r} in this command "
                             "(it names no .json file); write absolute urls in the index")
        return head + url + tail
    return urljoin(index_url, url)


def _from_index(loc: str, index: dict[str, Any], absolute) -> ShardSet:
    if not isinstance(index, dict) or not isinstance(index.get("shardlist"), list):
        raise ValueError(f"{loc}: not a shard index (no shardlist)")
    refs = [ShardRef(absolute(s["url"]), _name_of(s["url"]), int(s["nsamples"]),
                     int(s["filesize"]) if s.get("filesize") is not None else None) for s in index["shardlist"]]
    return ShardSet(loc, refs, index)


# ---------------------------------------------------------------- fetching and the cache

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


# ---------------------------------------------------------------- reading

def iter_tar(shard: ShardRef | str | Path) -> Iterator[dict[str, Any]]:
    """Samples of a shard front to back as ``{"__key__", "__url__", ext: bytes}`` (webdataset's
    tar stream parser; remote shards are read from their cached copy, leased while read, or
    streamed from their URL when the cache is off)."""
    ref = _ref(shard)
    if is_remote(ref.url) and cache_off():
        yield from _stream_samples(ref)
        return
    with lease(ref) as path, open(path, "rb") as stream:
        yield from _samples(stream, ref.url)


@contextmanager
def _open_stream(url: str):
    """A readable byte stream of a remote shard; closing a pipe: raises if its command failed."""
    if url.startswith("pipe:"):
        from webdataset.gopen import gopen

        stream = gopen(url, "rb")
        try:
            yield stream
        finally:
            stream.close()
        return
    import requests

    with requests.get(url, stream=True, timeout=_TIMEOUT_S) as r:
        if r.status_code != 200:
            err = f"{url}: HTTP {r.status_code} {r.reason}"
            if r.status_code >= 500 or r.status_code == 429:
                raise OSError(err)
            raise ShardFetchError(err)
        r.raw.decode_content = True
        yield r.raw


def _samples(stream, url: str) -> Iterator[dict[str, Any]]:
    from webdataset.tariterators import tar_file_iterator

    files = ((f["fname"], f["data"]) for f in tar_file_iterator(stream, skip_meta=None))
    for key, group in group_members(files, url):
        yield {"__key__": key, "__url__": url, **group}


def _stream_samples(ref: ShardRef) -> Iterator[dict[str, Any]]:
    """A remote shard's samples straight from the network: http(s) as one streamed response
    (its Content-Length enforced, so a cut body is an error, not a short shard), pipe: through
    webdataset's ``gopen``. A stream that breaks is opened again and the samples already given are
    skipped, up to ``AWM_SHARD_RETRIES`` times; a shard that ends with another number of samples
    than its index says is an error naming it."""
    retries, backoff = _retries()
    given = 0
    for attempt in range(retries + 1):
        try:
            with _open_stream(ref.url) as stream:
                for i, sample in enumerate(_samples(stream, ref.url)):
                    if i >= given:
                        given += 1
                        yield sample
            if ref.nsamples is not None and given != ref.nsamples:
                raise tarfile.ReadError(f"{given} samples, the index says {ref.nsamples}")
            return
        except ShardFetchError:
            raise
        except Exception as e:  # noqa: BLE001 - a network fault, a cut body, a failed command: retry
            if attempt == retries:
                raise ShardFetchError(f"{ref.url}: {type(e).__name__}: {e} (streamed; gave up after "
                                      f"{retries + 1} attempts)") from None
            log.warning("%s: %s; streaming again from sample %d (retry %d/%d)", ref.url, e, given,
                        attempt + 1, retries)
            time.sleep(backoff * 2 ** attempt)


def tar_members(path: str | Path) -> Iterator[tuple[str, tuple[int, int]]]:
    """``(name, (data offset, size))`` of a local tar's regular files, in order (Python's tarfile:
    handles every header format and stops with an error where the tar is damaged)."""
    with tarfile.open(path, mode="r:") as tar:
        for m in tar:
            if m.isfile():
                yield m.name, (m.offset_data, m.size)


def index_samples(path: str | Path) -> list[tuple[str, dict[str, tuple[int, int]]]]:
    """``(key, {ext: (offset, size)})`` of every sample of a local tar, for random access."""
    return list(group_members(tar_members(path), str(path)))


class TarReader:
    """Random access to shard samples (local, or remote through the cache) on wids' memory-mapped
    tar index: members indexed once per shard, then sample ``i`` is a few slices of the mapping.

    Keeps at most ``max_open`` shards mapped (least recently used closed first). ``nsamples``
    (url -> the index's count) makes a shard holding another number of samples an error naming
    it, rather than samples that silently go missing from an epoch.
    """

    def __init__(self, max_open: int = 64, nsamples: dict[str, int] | None = None):
        self.max_open = max_open
        self.nsamples = nsamples or {}
        self._open: OrderedDict[str, tuple[Any, list[tuple[str, dict[str, tuple[int, int]]]], Any]] = OrderedDict()

    def _shard(self, url: str):
        if url in self._open:
            self._open.move_to_end(url)
            return self._open[url]
        held = lease(url)  # kept while the shard is open: the cache never prunes it under us
        path = held.__enter__()
        try:
            tar, samples = self._index(url, path)
        except BaseException:
            held.__exit__(None, None, None)
            raise
        self._open[url] = (tar, samples, held)
        while len(self._open) > self.max_open:
            self._release(self._open.popitem(last=False)[1])
        return self._open[url]

    def _index(self, url: str, path: Path):
        from wids.wids_mmtar import MMIndexedTar

        if path.stat().st_size == 0:
            raise tarfile.ReadError(f"{url}: empty file")
        try:
            tar = MMIndexedTar(str(path), verbose=False)
        except (ValueError, UnicodeDecodeError, struct.error) as e:
            raise tarfile.ReadError(f"{url}: not a readable tar ({type(e).__name__}: {e})") from None
        end = len(tar.mmapped_file)
        for name, offset, size in tar.by_index:
            if offset + 512 + size > end:
                tar.close()
                raise tarfile.ReadError(f"{url}: member {name} runs past the end of the file (truncated)")
        samples = list(group_members(((n, (o + 512, s)) for n, o, s in tar.by_index), url))
        want = self.nsamples.get(url)
        if want is not None and len(samples) != want:
            tar.close()
            raise ShardFetchError(f"{url}: {len(samples)} samples, the index says {want} (shard changed?)")
        return tar, samples

    @staticmethod
    def _release(entry) -> None:
        tar, _, held = entry
        tar.close()
        held.__exit__(None, None, None)

    def read(self, url: str | Path, i: int) -> dict[str, Any]:
        """Sample ``i`` of the shard as ``{"__key__", ext: bytes}``; IndexError if there is none."""
        tar, samples, _ = self._shard(str(url))
        key, members = samples[i]
        data = tar.mmapped_file
        return {"__key__": key, **{ext: data[o:o + s] for ext, (o, s) in members.items()}}

    def close(self) -> None:
        for entry in self._open.values():
            self._release(entry)
        self._open.clear()

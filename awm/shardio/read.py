"""Reading shard samples: front to back (:func:`iter_tar`, webdataset's tar stream parser; streamed
from the URL when the cache is off) and at random (:class:`TarReader`, wids' memory-mapped index)."""

from __future__ import annotations

import struct
import tarfile
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from awm.log import get_logger
from awm.shardio.cache import _TIMEOUT_S, ShardFetchError, _ref, _retries, cache_off, lease
from awm.shardio.members import group_members
from awm.shardio.ref import ShardRef, is_remote

log = get_logger("awm.shardio")


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

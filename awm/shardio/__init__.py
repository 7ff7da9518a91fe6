"""Shard access for every stage: where shards are, fetching remote ones, and reading their samples.

The package, by seam: :mod:`~awm.shardio.ref` (one shard's address), :mod:`~awm.shardio.locations`
(a location to its shards), :mod:`~awm.shardio.cache` (remote fetch, cache, leases),
:mod:`~awm.shardio.members` (sample grouping, tar member index), :mod:`~awm.shardio.read`
(front-to-back and random-access readers). Code imports the module that holds a name; the
names re-exported here are the public ones a user script reads shards with (shards/README.md).

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

from awm.shardio.cache import CACHE_ENV, CACHE_MAX_ENV, ShardFetchError, local_path
from awm.shardio.locations import INDEX_NAME, ShardSet, resolve
from awm.shardio.read import TarReader, iter_tar
from awm.shardio.ref import ShardRef

__all__ = ["CACHE_ENV", "CACHE_MAX_ENV", "INDEX_NAME", "ShardFetchError", "ShardRef", "ShardSet", "TarReader",
           "iter_tar", "local_path", "resolve"]

"""``awm crawl``: download verified originals from a Moebooru or Danbooru API into raw shards.

The listing walks ids downwards (keyset paging) and decides what it can from metadata alone
(status, URL, rating, type, declared size and dimensions, the tag quota); a pool of ``--workers``
connections downloads the rest and verifies md5 and size, a check pool checks the image (header
before decode, one decode for the checks, the perceptual hash and the complexity) and the curation
thresholds (complexity, JPEG quality); results are committed in listing order, so dedup and the
variant policy (first kept member per family wins) give the same dataset whatever the timing.
A committed original is appended straight into the open shard's temp tar; state lives in SQLite
beside the shards (see ``awm.acquire.crawl_state``); re-running with the same arguments resumes
exactly. The crawl imports neither torch nor webdataset (start-up and memory count at scale).

One crawl, one politeness budget: ``--rate`` holds for everything that writes into ``--out``
(every worker of every part), through a rate file there (``fetch.SharedRateLimiter``), and the
listing pages are fetched once for all parts (``awm.acquire.listing``). ``--part i/n`` takes the
families (parent id, or own id) ≡ i (mod n), so variants of one family stay within one part;
part i writes shards i, i+n, i+2n, ... into the same folder. Duplicates *across* parts, earlier
runs and other sources are removed by the merge step (``awm.acquire.merge``), which a
single-process crawl runs at its end and ``awm submit crawl --array n`` after its parts.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from awm.acquire import booru, clean, merge
from awm.acquire.crawl_state import CrawlState
from awm.acquire.fetch import FetchError, FetchSettings, HttpClient, SharedRateLimiter
from awm.acquire.listing import SharedListing
from awm.config import add_dataclass_arguments, check, from_args, help_field, save_beside
from awm.dist import Part
from awm.errors import ConfigError
from awm.imageio import MAX_PIXELS_DEFAULT, ImageError
from awm.log import get_logger, progress
from awm.shardwrite import write_index

log = get_logger("awm.crawl")
MAX_PAGE_BYTES = 32 << 20
# Posts in flight (downloading, checking, or done and waiting to be committed in listing order) per
# worker: the committing thread appends a few MB per post and seals a shard (fsync) every
# --shard-size posts, and one slow download holds back the commits after it; a deep window keeps
# every connection and check thread busy meanwhile. Memory: the originals in flight are held, so
# beyond one per worker the window also stops at WINDOW_BYTES of declared file sizes.
WINDOW_PER_WORKER = 4
WINDOW_BYTES = 256 << 20



@dataclass
class CrawlConfig:
    source: Literal["konachan", "yandere", "danbooru"] = help_field("site preset (API dialect and address)",
                                                           default="konachan")
    tags: str = help_field("search tags, space-separated, as on the site", default="")
    out: Path = help_field("output folder for raw-%06d.tar shards, index.json and the crawl state",
                   default=Path("shards/raw"))
    base_url: str | None = help_field("override the site's address (mirrors, tests)", default=None)
    rating: str | None = help_field("comma-separated site ratings to keep; None: the site's safe one "
                            "(s on Moebooru, g on Danbooru)", default=None)
    min_side: int = help_field("skip images whose shorter side is below this", default=0)
    max_pixels: int = help_field("skip images with more pixels than this (checked before decoding)",
                         default=MAX_PIXELS_DEFAULT)
    limit: int = help_field("stop after keeping this many posts (0: no limit; per part)", default=0)
    rate: float = help_field("requests per second to the site from the whole crawl: every worker of every "
                             "part writing into --out shares it (0: unlimited)", default=1.0)
    shard_size: int = help_field("samples per raw shard", default=100)
    workers: int = help_field("parallel downloads of the whole crawl: each of n parts runs workers/n "
                              "(at least 1), all within --rate", default=4)
    part: str = help_field("take the i-th of n disjoint parts, e.g. 0/4 (array jobs)", default="0/1")
    variants: Literal["one", "all"] = help_field("parent/child variants: keep one per family or all", default="one")
    near_dup: int = help_field("perceptual-hash distance (bits of 64) counted as a near duplicate; -1: off",
                       default=4)
    webp: bool = help_field("also keep webp originals", default=False)
    min_complexity: float = help_field("skip images whose complexity score (mean luma gradient at 512 px, "
                                       "0..1; wallpapers ~0.02-0.1) is below this (0: off)", default=0.0)
    min_jpeg_quality: int = help_field("skip JPEG originals whose estimated quality (from their own "
                                       "quantisation tables) is below this (0: off; it is always recorded)",
                                       default=0)
    max_per_tag: int = help_field("tag-balanced selection: skip a post once every tag it carries (of "
                                  "--balance-tags, or all its tags) reached this many posts (0: off)", default=0)
    balance_tags: str = help_field("space-separated tags the --max-per-tag quota counts (empty: all tags)",
                                   default="")
    dedup_against: str = help_field("comma-separated raw shard folders (an ingest, an earlier crawl) whose "
                                    "samples win over this crawl's duplicates in the merge", default="")
    page_size: int = help_field("posts per listing page (0: the site's maximum)", default=0)
    retries: int = help_field("retries per request after the first try", default=5)
    backoff: float = help_field("base of the exponential backoff, seconds", default=1.0)
    backoff_max: float = help_field("cap of one backoff wait, seconds", default=60.0)
    max_wait: float = help_field("cap on an honoured Retry-After, seconds", default=600.0)
    timeout: float = help_field("connect/read timeout per request, seconds", default=30.0)
    max_bytes: int = help_field("response size cap per file, bytes", default=100 << 20)
    progress: bool = help_field("show a progress bar", default=True)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        site = booru.SITES[self.source]
        if self.base_url is not None:
            check(booru.url_allowed(self.base_url), "base_url", self.base_url, "an http(s) URL")
        valid = booru.RATINGS[site.dialect]
        for r in self.ratings:
            check(r in valid, "rating", self.rating, f"comma-separated letters of {', '.join(valid)}")
        for key in ("min_side", "limit", "page_size", "retries", "max_per_tag", "min_jpeg_quality"):
            check(getattr(self, key) >= 0, key, getattr(self, key), ">= 0")
        check(self.max_pixels > 0, "max_pixels", self.max_pixels, "> 0")
        check(self.shard_size >= 1, "shard_size", self.shard_size, ">= 1")
        check(1 <= self.workers <= 64, "workers", self.workers, "1..64")
        check(self.rate >= 0, "rate", self.rate, ">= 0 (0 = unlimited)")
        check(-1 <= self.near_dup < 32, "near_dup", self.near_dup, "-1 (off) .. 31")
        check(0 <= self.min_complexity <= 1, "min_complexity", self.min_complexity, "0..1")
        check(self.min_jpeg_quality <= 100, "min_jpeg_quality", self.min_jpeg_quality, "0..100")
        check(0 <= self.max_wait <= 3600, "max_wait", self.max_wait, "0..3600 seconds")
        check(self.timeout > 0 and self.backoff >= 0 and self.max_bytes > 0, "timeout/backoff/max_bytes",
              (self.timeout, self.backoff, self.max_bytes), "positive numbers")
        try:
            Part.parse(self.part)
        except ValueError as e:
            raise ConfigError("part", self.part, str(e)) from None

    @property
    def part_workers(self) -> int:
        """This part's share of ``--workers`` (the first ``workers % n`` parts take one more)."""
        p = Part.parse(self.part)
        return max(1, self.workers // p.count + (p.index < self.workers % p.count))

    @property
    def against(self) -> list[Path]:
        return [Path(x.strip()) for x in self.dedup_against.split(",") if x.strip()]

    @property
    def site(self) -> booru.Site:
        return booru.SITES[self.source]

    @property
    def url(self) -> str:
        return self.base_url or self.site.base_url

    @property
    def ratings(self) -> list[str]:
        text = self.rating if self.rating is not None else self.site.safe_rating
        return [r.strip() for r in text.split(",") if r.strip()]

    def fingerprint(self) -> dict[str, Any]:
        """What decides the dataset; resuming with other values is refused."""
        keys = ("source", "tags", "min_side", "max_pixels", "shard_size", "part", "variants",
                "near_dup", "webp", "max_bytes")
        curation = {k: getattr(self, k) for k in ("min_complexity", "min_jpeg_quality", "max_per_tag", "balance_tags")
                    if getattr(self, k) != getattr(CrawlConfig, k)}  # when set: crawls from before still resume
        return {"url": self.url, "ratings": self.ratings, **{k: getattr(self, k) for k in keys}, **curation}


@dataclass
class Outcome:
    """A worker's verdict on one post: the checked bytes, or a skip reason."""

    post: booru.Post
    reason: str | None = None
    data: bytes | None = None  # the verified original, exactly as downloaded
    checked: clean.Checked | None = None
    dup_of: int | None = None  # the kept post this one duplicates (dedup and variant skips)


class Crawler:
    def __init__(self, cfg: CrawlConfig):
        self.cfg = cfg
        self.part = Part.parse(cfg.part)
        self.formats = clean.allowed_formats(cfg.webp)
        self.state = CrawlState(cfg.out, self.part)
        self.state.check_fingerprint(cfg.fingerprint())
        self.state.recover()
        self.dedup = clean.Dedup(cfg.near_dup)
        self.families: dict[int, int] = {}
        for pid, md5, ph, fam in self.state.kept():
            self.dedup.add(md5, None if ph is None else clean.from_signed64(ph), pid)
            self.families.setdefault(fam, pid)
        self.tag_counts = self.state.tag_counts() if cfg.max_per_tag else {}
        self.balance = set(cfg.balance_tags.split())
        settings = FetchSettings(rate=cfg.rate, retries=cfg.retries, backoff=cfg.backoff,
                                 backoff_max=cfg.backoff_max, max_wait=cfg.max_wait, timeout=cfg.timeout)
        self.http = HttpClient(settings, limiter=SharedRateLimiter(cfg.rate, cfg.out / ".crawl_rate"))
        self.page_size = cfg.page_size or cfg.site.page_size
        self.listing = SharedListing(cfg.out, {"url": cfg.url, "dialect": cfg.site.dialect,
                                               "tags": self._page_query_tags(), "limit": self.page_size})
        self.listing_error: str | None = None

    # ---- listing --------------------------------------------------------------------------
    def _page_query_tags(self) -> str:
        tags = self.cfg.tags.split()
        ratings = self.cfg.ratings
        # Server-side rating filter saves pages; Danbooru caps anonymous searches at 2 tags.
        if len(ratings) == 1 and (self.cfg.site.dialect == "moebooru" or len(tags) < 2):
            tags.append(f"rating:{ratings[0]}")
        return " ".join(tags)

    def fetch_page(self) -> None:
        """Take the next listing page (shared by all parts: fetched only if no part has) and record
        this part's posts, the tag counts and the page number atomically."""
        k = self.state.page_index()
        page = self.listing.page(k, self._fetch_listing)
        changed: dict[str, int] = {}
        rows = [row for row in (self._decide(e, changed) for e in page.entries) if row is not None]
        noid = sum(booru.post_id_of(e) is None for e in page.entries) if self.part.index == 0 else 0
        self.state.record_page(rows, k + 1, done=page.done, noid=noid, tags=changed)

    def _fetch_listing(self, cursor: int | None) -> tuple[list[Any], int | None]:
        """One listing request below ``cursor``: (entries, the next cursor)."""
        url, params = booru.listing_request(self.cfg.site.dialect, self.cfg.url, self._page_query_tags(),
                                            cursor, self.page_size)
        entries: list[Any] = []

        def parse(body: bytes) -> None:
            try:
                value = json.loads(body)
            except ValueError:
                raise FetchError("bad_json", True, detail=body[:80].decode("latin-1")) from None
            if not isinstance(value, list):
                raise FetchError("bad_json", True, detail=f"expected a list, got {str(value)[:80]}")
            entries[:] = value

        self.http.get(url, MAX_PAGE_BYTES, params=params, check=parse, priority=True)
        ids = [i for i in map(booru.post_id_of, entries) if i is not None]
        if entries and not ids:
            raise FetchError("bad_json", False, detail="a page without any post id: cannot page on")
        new_cursor = min(ids) if ids else cursor
        if ids and cursor is not None and new_cursor >= cursor:
            raise FetchError("keyset_ignored", False, detail=f"page below id {cursor} returned id {new_cursor}")
        return entries, new_cursor

    def _decide(self, raw: Any, changed: dict[str, int]) -> tuple | None:
        """The listing-time decision on one entry: (id, status, reason, md5, family, meta) or None.

        Called for every entry by every part, so the tag quota (counted over all posts that pass
        the metadata checks, in listing order) is the same in every part without talking."""
        pid = booru.post_id_of(raw)
        if pid is None:
            return None
        if not self.cfg.max_per_tag and not self.part.takes(booru.family_of(raw, pid)):
            return None  # another part's post, and no quota to count it in: skip the parsing
        try:
            post = booru.normalise(self.cfg.site.dialect, raw, self.cfg.url)
        except booru.BadPost as e:
            return (pid, "skipped", e.reason, None, pid, None) if self.part.takes(pid) else None
        reason = self.metadata_skip_reason(post)
        if reason is None and self.cfg.max_per_tag:
            reason = self._tag_quota(post, changed)
        if not self.part.takes(post.family):
            return None
        meta = json.dumps(asdict(post))
        return (pid, "skipped" if reason else "pending", reason, post.md5, post.family, meta)

    def _tag_quota(self, post: booru.Post, changed: dict[str, int]) -> str | None:
        """``tag_quota`` when every counted tag of the post is full; else count the post in each."""
        tags = [t for t in dict.fromkeys(post.tags.split()) if not self.balance or t in self.balance]
        if tags and all(self.tag_counts.get(t, 0) >= self.cfg.max_per_tag for t in tags):
            return "tag_quota"
        for t in tags:
            changed[t] = self.tag_counts[t] = self.tag_counts.get(t, 0) + 1
        return None

    def metadata_skip_reason(self, post: booru.Post) -> str | None:
        if post.status in ("deleted", "flagged", "banned"):
            return post.status
        if not post.file_url:
            return "no_url"
        if not booru.url_allowed(post.file_url):
            return "bad_url"
        if post.rating not in self.cfg.ratings:
            return "rating"
        if post.file_size < 0:
            return "bad_size"
        if post.file_size == 0:
            return "empty_file"
        if post.file_size > self.cfg.max_bytes:
            return "too_large"
        return (clean.type_skip_reason(post.file_ext, self.formats)
                or clean.dims_skip_reason(post.width, post.height, self.cfg.max_pixels, self.cfg.min_side))

    # ---- downloads ------------------------------------------------------------------------
    def download(self, post: booru.Post, checks: ThreadPoolExecutor) -> Outcome | Future[Outcome]:
        """Fetch and verify one original (download thread), then hand it to the check pool, so a
        connection never waits on a decode (threads; the database is not touched)."""

        def verify(body: bytes) -> None:
            if hashlib.md5(body).hexdigest() != post.md5:
                raise FetchError("md5_mismatch", True)
            if len(body) != post.file_size:
                raise FetchError("size_mismatch", True, detail=f"{len(body)} != {post.file_size}")

        try:
            data = self.http.get(post.file_url or "", self.cfg.max_bytes, check=verify)
        except FetchError as e:
            return Outcome(post, reason=e.reason)
        return checks.submit(self.check, post, data)

    def check(self, post: booru.Post, data: bytes) -> Outcome:
        """The content checks and curation measures of verified bytes (check thread)."""
        try:
            checked = clean.check_image(data, self.formats, self.cfg.max_pixels, self.cfg.min_side, md5=post.md5)
        except ImageError as e:
            return Outcome(post, reason=e.reason)
        reason = clean.curation_skip_reason(checked, self.cfg.min_complexity, self.cfg.min_jpeg_quality)
        if reason:
            return Outcome(post, reason=reason)
        return Outcome(post, data=data, checked=checked)

    def _kept_enough(self) -> bool:
        return bool(self.cfg.limit) and len(self.dedup) >= self.cfg.limit

    def _prior_skip(self, post: booru.Post) -> tuple[str, int] | None:
        """Skips decidable from what is already kept, before spending a download: (reason, kept id)."""
        if (of := self.dedup.seen_md5(post.md5)) is not None:
            return "duplicate_md5", of
        if self.cfg.variants == "one" and post.family in self.families:
            return "variant", self.families[post.family]
        return None

    def commit(self, out: Outcome) -> bool:
        """Apply dedup and the variant policy in listing order; True when the post was kept."""
        post = out.post
        reason, of = out.reason, out.dup_of
        if reason is None:
            reason, of = self._prior_skip(post) or (None, None)
        if reason is None and out.checked is not None:
            reason, of = self.dedup.skip_reason(out.checked.md5, out.checked.phash) or (None, None)
        if reason is not None:
            self.state.skip(post.id, reason, of)
            return False
        c = out.checked
        assert c is not None and out.data is not None
        meta = {**post.metadata(self.cfg.source), "width": c.width, "height": c.height, **c.metadata(),
                "fetched_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        self.state.append(post.id, c.format, out.data, clean.to_signed64(c.phash), meta, self.cfg.shard_size)
        self.dedup.add(c.md5, c.phash, post.id)
        self.families.setdefault(post.family, post.id)
        return True

    def _supply(self):
        """Pending posts in listing order, fetching pages as the supply runs out."""
        below = None
        while not self._kept_enough():
            rows = self.state.pending(below, 64)
            if rows:
                for pid, meta in rows:
                    below = pid
                    yield booru.Post(**json.loads(meta))
                continue
            if self.state.listing_done():
                return
            try:
                self.fetch_page()
            except FetchError as e:
                self.listing_error = f"listing failed after retries: {e}"
                return

    def kept_posts(self):
        """Run the pools (``workers`` downloads, as many checks); yield once per kept post (drives
        the progress bar)."""
        workers = self.cfg.part_workers
        window = workers * WINDOW_PER_WORKER
        inflight: collections.deque[tuple[int, Future | Outcome]] = collections.deque()  # (declared size, item)
        held = 0  # declared bytes of the posts in flight
        supply = self._supply()
        with (ThreadPoolExecutor(workers, thread_name_prefix="crawl-check") as checks,
              ThreadPoolExecutor(workers, thread_name_prefix="crawl") as pool):
            try:
                while True:
                    while (len(inflight) < window and (len(inflight) < workers or held < WINDOW_BYTES)
                           and not self._kept_enough()):
                        post = next(supply, None)
                        if post is None:
                            break
                        prior = self._prior_skip(post)
                        size = 0 if prior else post.file_size
                        held += size
                        inflight.append((size, Outcome(post, *prior[:1], dup_of=prior[1]) if prior
                                         else pool.submit(self.download, post, checks)))
                    if not inflight:
                        return
                    size, outcome = inflight.popleft()
                    held -= size
                    while isinstance(outcome, Future):  # a download, then its check
                        outcome = outcome.result()
                    if not self._kept_enough() and self.commit(outcome):
                        yield outcome.post.id
            finally:
                for _, item in inflight:
                    if isinstance(item, Future):
                        item.cancel()

    def run(self) -> dict[str, Any]:
        t0 = time.time()
        bar = progress(self.kept_posts(), total=self.cfg.limit or None, desc=f"crawl {self.cfg.source}",
                       unit="img", enabled=self.cfg.progress)
        for _ in bar:
            pass
        finished = self._kept_enough() or self.state.listing_done()
        if finished:
            self.state.close_open()
        self.http.limiter.close()
        extra: dict[str, Any] = {"source": self.cfg.source, "tags": self.cfg.tags, "url": self.cfg.url}
        if finished and self.part.count == 1:  # one process: it is its own merge step
            extra["dedup"] = merge.dedup(self.cfg.out, self.cfg.near_dup, self.cfg.against)
        summary = {"status": "complete" if finished else "incomplete", **self.state.summary(),
                   **self.http.counts, "seconds": round(time.time() - t0, 2), "part": self.cfg.part}
        self.state.close()
        write_index(self.cfg.out, "raw-", extra={**extra, "crawl": summary})
        if self.listing_error:
            summary["error"] = self.listing_error
        return summary


def crawl(cfg: CrawlConfig) -> dict[str, Any]:
    """Crawl (or resume) into ``cfg.out``; returns the summary (kept, skipped by reason, bytes, time)."""
    return Crawler(cfg).run()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_arguments(parser, CrawlConfig)


def run(args: argparse.Namespace) -> int:
    cfg = from_args(CrawlConfig, args)
    s = crawl(cfg)
    save_beside(cfg, cfg.out, f"crawl-{cfg.part.replace('/', 'of')}")
    log.info("crawl %s: kept %d (%.1f MB) in %d shards, skipped %d %s, %d requests, %d retries, %.1f s",
             s["status"], s["kept"], s["bytes"] / 1e6, s["shards"], s["nskipped"], s["skipped"],
             s["requests"], s["retries"], s["seconds"])
    if "error" in s:
        log.error("%s; re-run the same command to resume", s["error"])
        return 1
    if s["kept"] == 0:  # unexpected exceptions are not caught as skips: they end the run with exit 1
        log.error("crawl: no post kept (skipped: %s); check --tags, --rating and the size limits", s["skipped"])
        return 1
    return 0

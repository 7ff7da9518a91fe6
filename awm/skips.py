"""Skip reasons: one vocabulary for every stage that drops inputs (crawl, ingest, shard, training's
loader), and the named record each stage keeps of what it dropped.

A skip is counted by reason and, for the first :data:`NAMES_PER_REASON` of each reason, named
(a file's path relative to the input folder, ``raw-NNNNNN.tar/key.ext`` inside a raw shard, a
booru post id), so a lost image can be traced from ``index.json`` or a shard's ``*_stats.json``
(``skipped``: counts, ``skipped_names``: the names). The same broken file gets the same reason in
every stage: the checks live in :mod:`awm.imageio` and :mod:`awm.acquire.clean`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

NAMES_PER_REASON = 100

REASONS: dict[str, str] = {
    # the bytes (awm.imageio, awm.acquire.clean): every stage that reads images
    "empty_file": "zero bytes",
    "not_an_image": "not an image format at all (e.g. an HTML error page)",
    "bad_header": "an image format whose header cannot be read",
    "unsupported_type": "a format not kept (kept: png, jpg; webp when asked)",
    "truncated": "the file stops before its end marker (an interrupted download or copy)",
    "undecodable": "a complete file the decoder rejects (corrupt data)",
    "size_mismatch": "decoded pixels disagree with the header, or LR with HR, or bytes with the listing",
    "unsupported_depth": "a sample type other than 8/16-bit integer or float",
    "cmyk_jpeg": "a CMYK JPEG (no colour-managed conversion here)",
    "encode_failed": "the encoder refused the image",
    "unsupported_format": "an output format the encoder does not write",
    # size limits
    "bad_size": "a non-positive width, height or byte size",
    "too_many_pixels": "more pixels than max_pixels (checked before decoding)",
    "too_small": "a side below the minimum (min_side, min_lr_side, a model's size floor)",
    "smaller_than_tile": "a side below the tile size and below shard --tile-min (the training patch)",
    "too_large": "more bytes than max_bytes",
    # duplicates (md5 and 64-bit perceptual hash, awm.acquire.clean)
    "duplicate_md5": "the same bytes as a kept image",
    "near_duplicate": "within near_dup bits of a kept image's perceptual hash",
    "changed_while_read": "the file's bytes changed between ingest's examination and its copy",
    "duplicate_id": "a second source with an id already used",
    "variant": "another post of a family already kept (crawl --variants one)",
    # curation (awm.acquire.clean, crawl)
    "low_complexity": "image complexity (mean luma gradient) below --min-complexity",
    "low_jpeg_quality": "a JPEG whose quantisation tables estimate a quality below --min-jpeg-quality",
    "tag_quota": "every counted tag of the post already holds --max-per-tag posts",
    # reading inputs
    "unreadable": "the file could not be read (permissions, I/O error)",
    "no_hr": "a pair sample without its hr image",
    "no_image": "a raw sample without an image member",
    "bad_key": "a tar member whose key cannot name a sample (dots, empty)",
    "no_lr": "a pair sample without an LR image at the scale asked for",
    # booru listings and downloads (awm.acquire.crawl)
    "bad_metadata": "a listing entry without a usable id, md5 or URL",
    "deleted": "the post is deleted", "flagged": "the post is flagged", "banned": "the post is banned",
    "no_url": "the post has no original's URL", "bad_url": "the original's URL is not http(s)",
    "bad_redirect": "a redirect to a URL that is not http(s)", "rating": "a rating not asked for",
    "md5_mismatch": "the downloaded bytes do not match the listed md5",
    "timeout": "the download timed out", "connection_error": "the connection failed",
    "request_error": "the request could not be made", "too_many_redirects": "a redirect loop",
    "bad_encoding": "a response whose content encoding cannot be undone",
    "bad_json": "a listing page that is not a JSON list of posts",
    "keyset_ignored": "the API ignored the id:<N keyset paging (a listing error, not a post's)",
}
# Families of reasons with a variable part: an HTTP status, an unexpected exception's type.
PREFIXES: dict[str, str] = {"http_": "the server answered with this HTTP status",
                            "no_lr_x": "no LR image at this scale (awm eval)",
                            "error_": "an unexpected exception of this type (a bug or an I/O failure): reported as a failure"}


def known(reason: str) -> bool:
    """Whether ``reason`` belongs to the vocabulary (a listed reason or a listed family)."""
    return reason in REASONS or any(reason.startswith(p) and len(reason) > len(p) for p in PREFIXES)


def add_name(names: dict[str, list[str]], reason: str, name: str) -> None:
    """Record ``name`` under ``reason`` unless that reason already has NAMES_PER_REASON names."""
    kept = names.setdefault(reason, [])
    if len(kept) < NAMES_PER_REASON:
        kept.append(name)


def merge_names(parts: Iterable[Mapping[str, list[str]]]) -> dict[str, list[str]]:
    """The named skips of several records (shards, parts) in order, capped per reason."""
    out: dict[str, list[str]] = {}
    for part in parts:
        for reason, names in part.items():
            for name in names:
                add_name(out, reason, name)
    return dict(sorted(out.items()))

"""Booru API dialects: site presets, listing URLs (keyset paging) and post field normalisation.

Moebooru (Konachan, yande.re) and Danbooru name the same things differently; everything past
this module sees one ``Post``. Listing pages walk ids downwards with a keyset (``id:<N`` on
Moebooru, ``page=b<N>`` on Danbooru), so a page never shifts when new posts arrive and a
resumed crawl continues from the lowest id it has fully recorded, without deep page numbers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urljoin, urlsplit

Dialect = Literal["moebooru", "danbooru"]


@dataclass(frozen=True)
class Site:
    dialect: Dialect
    base_url: str
    page_size: int  # the API's maximum page size
    safe_rating: str  # what "safe only" means on this site


SITES: dict[str, Site] = {
    "konachan": Site("moebooru", "https://konachan.com", 100, "s"),
    "yandere": Site("moebooru", "https://yande.re", 100, "s"),
    # Danbooru's "s" means "sensitive" since 2022; its safe rating is "g" (general).
    "danbooru": Site("danbooru", "https://danbooru.donmai.us", 200, "g"),
}
RATINGS = {"moebooru": ("s", "q", "e"), "danbooru": ("g", "s", "q", "e")}
_MD5_RE = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class Post:
    """One post in the fields AWM uses, whatever the dialect."""

    id: int
    tags: str
    rating: str
    width: int
    height: int
    md5: str
    file_url: str | None
    file_ext: str
    file_size: int
    parent_id: int | None
    has_children: bool
    score: int | None
    status: str  # active | pending | flagged | deleted | banned

    @property
    def family(self) -> int:
        """Variants share their parent's id (one level: a child points at its parent)."""
        return self.parent_id if self.parent_id else self.id

    def metadata(self, source: str) -> dict[str, Any]:
        return {"id": self.id, "source": source, "tags": self.tags, "rating": self.rating,
                "width": self.width, "height": self.height, "md5": self.md5,
                "file_url": self.file_url, "parent_id": self.parent_id, "score": self.score}


class BadPost(ValueError):
    """A listing entry that cannot be used; ``reason`` is the recorded skip reason."""

    def __init__(self, reason: str, post_id: int | None, detail: str = ""):
        self.reason, self.post_id = reason, post_id
        super().__init__(f"{reason}: {detail}")


def listing_request(dialect: Dialect, base_url: str, tags: str, before: int | None,
                    limit: int) -> tuple[str, dict[str, str]]:
    """URL and query of the page of posts with id < ``before`` (newest first; None = from the top)."""
    base = base_url.rstrip("/") + "/"
    if dialect == "moebooru":
        t = f"{tags} id:<{before}".strip() if before is not None else tags.strip()
        return urljoin(base, "post.json"), {"tags": t, "limit": str(limit)}
    params = {"tags": tags.strip(), "limit": str(limit)}
    if before is not None:
        params["page"] = f"b{before}"
    return urljoin(base, "posts.json"), params


def _int(raw: dict, key: str, post_id: int | None, optional: bool = False) -> int | None:
    v = raw.get(key)
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        raise BadPost("bad_metadata", post_id, f"{key}={v!r}")
    try:
        return int(v)
    except ValueError:
        raise BadPost("bad_metadata", post_id, f"{key}={v!r}") from None


def post_id_of(raw: Any) -> int | None:
    """The id of a listing entry, or None when there is no usable one (used for the cursor too)."""
    if not isinstance(raw, dict):
        return None
    v = raw.get("id")
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        return None
    return v


def family_of(raw: dict, pid: int) -> int:
    """``Post.family`` straight from a listing entry, without normalising the rest (a malformed
    parent id gives the post's own id: ``normalise`` rejects that entry in the part owning that id)."""
    try:
        return _int(raw, "parent_id", pid, optional=True) or pid
    except BadPost:
        return pid


def _status(dialect: Dialect, raw: dict) -> str:
    if dialect == "moebooru":
        return str(raw.get("status") or "active")
    for flag, status in (("is_deleted", "deleted"), ("is_banned", "banned"), ("is_flagged", "flagged")):
        if raw.get(flag):
            return status
    return "pending" if raw.get("is_pending") else "active"


def normalise(dialect: Dialect, raw: Any, base_url: str) -> Post:
    """A ``Post`` from one listing entry; ``BadPost`` (with a skip reason) if it is malformed."""
    pid = post_id_of(raw)
    if pid is None:
        raise BadPost("bad_metadata", None, f"entry without a positive integer id: {str(raw)[:80]}")
    danbooru = dialect == "danbooru"
    tags = raw.get("tag_string" if danbooru else "tags") or ""
    md5 = raw.get("md5")
    if not isinstance(tags, str) or not isinstance(md5, str) or not _MD5_RE.match(md5.lower()):
        raise BadPost("bad_metadata", pid, f"tags/md5 {md5!r}")
    url = raw.get("file_url")
    if url is not None and not isinstance(url, str):
        raise BadPost("bad_metadata", pid, f"file_url {url!r}")
    has_children = raw.get("has_active_children" if danbooru else "has_children")
    return Post(
        id=pid, tags=tags, rating=str(raw.get("rating") or ""),
        width=_int(raw, "image_width" if danbooru else "width", pid),
        height=_int(raw, "image_height" if danbooru else "height", pid),
        md5=md5.lower(), file_url=absolute_url(url, base_url) if url else None,
        file_ext=str(raw.get("file_ext") or ""), file_size=_int(raw, "file_size", pid),
        parent_id=_int(raw, "parent_id", pid, optional=True) or None,
        has_children=bool(has_children), score=_int(raw, "score", pid, optional=True),
        status=_status(dialect, raw))


def absolute_url(url: str, base_url: str) -> str:
    """Older Moebooru returns protocol-relative (``//host/...``) or relative URLs."""
    return urljoin(base_url.rstrip("/") + "/", url)


def url_allowed(url: str | None) -> bool:
    """Only plain http(s) URLs with a host are ever requested (no file:, ftp:, data:, ...)."""
    if not url:
        return False
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname)

"""A Moebooru/Danbooru-compatible HTTP server on 127.0.0.1 for crawler tests (real sockets).

Serves ``/post.json`` (Moebooru: ``tags`` with ``id:<N``, ``rating:X`` and plain tags, ``limit``,
``page``) and ``/posts.json`` (Danbooru: ``page=b<N>`` or a number), originals under ``/data/``,
decoy re-encodes under ``/jpeg/`` (a crawler that uses ``jpeg_url`` gets different bytes),
and ``/redirect?to=URL``. Faults are queued per path and consumed one per request:
``429:<retry-after>``, ``500``, ``503``, ``reset`` (TCP RST, no response), ``slow:<seconds>``,
``truncate`` (full Content-Length, half the body), ``corrupt`` (one byte flipped), ``badjson``.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import socket
import struct
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from awm.data.synth import generate
from awm.imageio import encode_image

DANBOORU_FLAGS = {"deleted": "is_deleted", "flagged": "is_flagged", "pending": "is_pending"}


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # clients that time out or give up mid-body are part of the tests


class BooruServer:
    """Posts are stored with Moebooru field names; ``/posts.json`` renames them Danbooru's way."""

    def __init__(self, file_delay: float = 0.0, host: str = "127.0.0.1"):
        self.posts: dict[int, dict] = {}
        self._ids_desc: list[int] | None = None  # listing order, rebuilt after posts change
        self.raw_entries: list[dict] = []  # malformed entries served verbatim on the first page
        self.files: dict[str, bytes] = {}
        self.faults: dict[str, list[str]] = {}
        self.requests: list[tuple[float, str]] = []
        self.queries: list[tuple[float, str, str]] = []  # (time, path, query string) of every request
        self.file_delay = file_delay
        self._lock = threading.Lock()
        self.httpd = _QuietServer((host, 0), _handler(self))
        self.url = f"http://{host}:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> BooruServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def add_post(self, pid: int, data: bytes, ext: str = "png", *, faults: tuple[str, ...] = (),
                 **fields) -> dict:
        """A post whose original is ``data`` at /data/<pid>.<ext>; ``fields`` override any field."""
        path = f"/data/{pid}.{ext.replace('/', '_')}"
        self.files[path] = data
        self.files[f"/jpeg/{pid}.jpg"] = b"\xff\xd8\xff decoy re-encode"
        if faults:
            self.faults[path] = list(faults)
        post = {
            "id": pid, "tags": "wallpaper scenic", "created_at": 1700000000 + pid, "creator_id": 1,
            "author": "tester", "source": "", "score": pid % 7, "md5": hashlib.md5(data).hexdigest(),
            "file_size": len(data), "file_ext": ext, "file_url": self.url + path,
            "is_shown_in_index": True, "preview_url": f"{self.url}/jpeg/{pid}.jpg",
            "sample_url": f"{self.url}/jpeg/{pid}.jpg", "jpeg_url": f"{self.url}/jpeg/{pid}.jpg",
            "sample_width": 150, "sample_height": 100, "jpeg_width": 150, "jpeg_height": 100,
            "rating": "s", "is_rating_locked": False, "has_children": False, "parent_id": None,
            "status": "active", "is_held": False, "frames": [], "width": 0, "height": 0}
        post.update(fields)
        self.posts[pid] = post
        self._ids_desc = None
        return post

    def page_faults(self, *actions: str) -> None:
        for endpoint in ("/post.json", "/posts.json"):
            self.faults.setdefault(endpoint, []).extend(actions)

    def count(self, path: str) -> int:
        with self._lock:
            return sum(1 for _, p in self.requests if p == path)

    def times(self, path: str) -> list[float]:
        with self._lock:
            return [t for t, p in self.requests if p == path]

    # ---- listing ---------------------------------------------------------------------------
    def listing(self, query: dict[str, list[str]], danbooru: bool) -> list[dict]:
        tags = (query.get("tags") or [""])[0].split()
        limit = int((query.get("limit") or ["100"])[0])
        page = (query.get("page") or ["1"])[0]
        below = None
        plain = []
        for t in tags:
            if t.startswith("id:<"):
                below = int(t[4:])
            elif not t.startswith("rating:"):
                plain.append(t)
        ratings = [t[7:] for t in tags if t.startswith("rating:")]
        if danbooru and page.startswith("b"):
            below, page = int(page[1:]), "1"
        if self._ids_desc is None:
            self._ids_desc = sorted(self.posts, reverse=True)
        ids = self._ids_desc
        first = 0 if below is None else len(ids) - bisect.bisect_left(ids[::-1], below)
        start = (int(page) - 1) * limit
        posts = []
        for pid in ids[first:]:
            p = self.posts[pid]
            if (not ratings or p["rating"] in ratings) and all(
                    (t[1:] not in p["tags"].split()) if t.startswith("-") else t in p["tags"].split() for t in plain):
                posts.append(p)
                if len(posts) >= start + limit:
                    break
        out = [self._danbooru(p) if danbooru else p for p in posts[start:start + limit]]
        if below is None and start == 0:
            out = self.raw_entries + out
        return out

    @staticmethod
    def _danbooru(p: dict) -> dict:
        d = {"id": p["id"], "tag_string": p["tags"], "rating": p["rating"], "md5": p["md5"],
             "image_width": p["width"], "image_height": p["height"], "file_ext": p["file_ext"],
             "file_size": p["file_size"], "parent_id": p["parent_id"], "score": p["score"],
             "has_children": p["has_children"], "has_active_children": p["has_children"],
             "large_file_url": p["jpeg_url"], "preview_file_url": p["preview_url"],
             **{flag: p["status"] == s for s, flag in DANBOORU_FLAGS.items()}, "is_banned": False}
        if p.get("file_url") is not None:
            d["file_url"] = p["file_url"]
        return d


def _handler(server: BooruServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # as real servers do; else delayed ACKs stall keep-alive

        def log_message(self, *args) -> None:
            pass

        def _send(self, status: int, body: bytes, ctype: str = "application/json",
                  headers: dict[str, str] | None = None, length: int | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body) if length is None else length))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def _reset(self) -> None:
            self.close_connection = True
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.shutdown(socket.SHUT_RDWR)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            parts = urlsplit(self.path)
            path, query = parts.path, parse_qs(parts.query)
            with server._lock:
                queue = server.faults.get(path) or []
                action = queue.pop(0) if queue else ""
                server.requests.append((time.monotonic(), path))
                server.queries.append((time.monotonic(), path, parts.query))
            if action.startswith("slow:"):
                time.sleep(float(action[5:]))
                action = ""
            if action == "reset":
                return self._reset()
            if action.startswith("429"):
                return self._send(429, b"{}", headers={"Retry-After": action.split(":")[1]})
            if action in ("500", "503"):
                return self._send(int(action), b"<html>busy</html>", "text/html")
            if path in ("/post.json", "/posts.json"):
                if action == "badjson":
                    return self._send(200, b"[{\"id\": 1,")
                body = json.dumps(server.listing(query, danbooru=path == "/posts.json")).encode()
                return self._send(200, body)
            if path == "/redirect":
                self.send_response(302)
                self.send_header("Location", query["to"][0])
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            data = server.files.get(path)
            if data is None:
                return self._send(404, b"<html>not found</html>", "text/html")
            if server.file_delay and path.startswith("/data/"):
                time.sleep(server.file_delay)
            if action == "truncate":
                self._send(200, data[:len(data) // 2], "application/octet-stream", length=len(data))
                return self._reset()
            if action == "corrupt":
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            return self._send(200, data, "application/octet-stream")

    return Handler


def png(seed: int, w: int = 72, h: int = 48) -> bytes:
    return encode_image(generate(seed, w, h), "png")


def bomb_png() -> bytes:
    """A valid PNG signature and IHDR that claim 60000x60000 pixels, with almost no data."""
    ihdr = struct.pack(">IIBBBBB", 60000, 60000, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
            + struct.pack(">I", zlib.crc32(chunk)) + b"\x00\x00\x00\x00IEND\xaeB`\x82")


def build_scenario(srv: BooruServer) -> tuple[set[int], dict[int, str]]:
    """Every fault the crawler must survive; returns (ids to keep, {id: expected skip reason}).

    Run with --min-side 40, --timeout ~0.4 s and small backoffs. Pairs that dedup against each
    other (variants, md5 and near duplicates) have families of one parity, so --part 0/2 and
    1/2 keep exactly the same set between them.
    """
    keep: set[int] = set()
    skip: dict[int, str] = {}
    u = srv.url
    for pid in range(300, 280, -1):
        srv.add_post(pid, png(pid), width=72, height=48)
        keep.add(pid)
    transient = {300: ("429:1",), 299: ("500", "503"), 298: ("reset",), 297: ("slow:1.2",),
                 296: ("truncate",), 295: ("corrupt",), 294: ("reset", "500", "truncate")}
    for pid, faults in transient.items():
        srv.faults[f"/data/{pid}.png"] = list(faults)
    jpg = encode_image(generate(279, 80, 50), "jpg", 90)
    srv.add_post(279, jpg, "jpg", width=80, height=50)
    srv.add_post(278, encode_image(generate(278, 80, 50), "jpg", 90), "png", width=80, height=50)
    srv.add_post(277, png(277), file_url=f"/redirect?to={u}/data/277.png", width=72, height=48)
    srv.add_post(276, png(276), width=72, height=48).update(file_url=f"//127.0.0.1:{u.rsplit(':', 1)[1]}/data/276.png")
    keep |= {279, 278, 277, 276}
    # Variants: 252 (child, newest) is kept; its sibling and parent are skipped.
    srv.add_post(250, png(250), width=72, height=48, has_children=True)
    srv.add_post(251, png(251), width=72, height=48, parent_id=250)
    srv.add_post(252, png(252), width=72, height=48, parent_id=250)
    keep.add(252)
    skip |= {251: "variant", 250: "variant"}
    # Exact and near duplicates of kept posts (same parity as the originals).
    srv.add_post(240, png(290), width=72, height=48)
    skip[240] = "duplicate_md5"
    srv.add_post(238, encode_image(generate(288, 72, 48), "jpg", 85), "jpg", width=72, height=48)
    skip[238] = "near_duplicate"
    bad = {
        230: dict(status="deleted", file_url=None),
        229: dict(status="flagged"),
        228: dict(md5="0" * 32),
        227: dict(file_ext="../../x"),
        226: dict(file_ext="gif"),
        225: dict(file_url="file:///etc/passwd"),
        224: dict(file_url="ftp://127.0.0.1/x.png"),
        223: dict(file_url=f"{u}/redirect?to=file:///etc/passwd"),
        222: dict(file_size=10 ** 15),
        221: dict(file_size=-5),
        220: dict(file_url=f"{u}/data/missing.png"),
        219: dict(width=40, height=30),
        218: dict(width=10000, height=10000),
        217: dict(file_ext="webp"),
    }
    reasons = {230: "deleted", 229: "flagged", 228: "md5_mismatch", 227: "unsupported_type",
               226: "unsupported_type", 225: "bad_url", 224: "bad_url", 223: "bad_redirect",
               222: "too_large", 221: "bad_size", 220: "http_404", 219: "too_small",
               218: "too_many_pixels", 217: "unsupported_type"}
    for pid, fields in bad.items():
        srv.add_post(pid, png(pid), **{"width": 72, "height": 48, **fields})
    skip |= reasons
    srv.add_post(216, png(216), width=72, height=48, faults=("truncate",) * 100)
    srv.add_post(215, png(215), width=72, height=48, faults=("503",) * 100)
    srv.add_post(214, b"<html><body>Please complete the challenge</body></html>", width=72, height=48)
    srv.add_post(213, b"", width=72, height=48)
    srv.add_post(212, bomb_png(), width=72, height=48)
    full = png(211)
    srv.add_post(211, full[:len(full) // 2], width=72, height=48)
    srv.add_post(210, b"\x00" * 100, width=72, height=48, file_size=100)
    skip |= {216: "truncated", 215: "http_503", 214: "not_an_image", 213: "empty_file",
             212: "too_many_pixels", 211: "truncated", 210: "not_an_image"}
    srv.add_post(209, png(209), width=72, height=48, rating="q")  # filtered by the server
    srv.add_post(208, png(208), width=72, height=48, rating="e")
    # Malformed entries lead the first page (ids above every post, so paging is unaffected).
    srv.raw_entries = [{"id": 302, "tags": "x", "width": "wide", "md5": "1" * 32},
                       {"id": 301, "tags": "x"}, {"no_id": True}, "not a dict"]
    skip |= {302: "bad_metadata", 301: "bad_metadata"}
    return keep, skip

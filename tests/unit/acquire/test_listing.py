"""The shared listing pages of a crawl: fetched once, in order, resumable after a kill."""

import gzip
import json

from awm.acquire.listing import SharedListing

QUERY = {"site": "konachan", "tags": "wallpaper", "limit": 7}


def test_a_page_is_fetched_once_below_the_previous_cursor(tmp_path):
    calls = []

    def fetch(cursor):
        calls.append(cursor)
        return ([{"id": 9}, {"id": 8}], 8) if cursor is None else ([], cursor)

    listing = SharedListing(tmp_path, QUERY)
    assert listing.page(0, fetch).entries == [{"id": 9}, {"id": 8}]
    assert listing.page(1, fetch).done
    assert SharedListing(tmp_path, QUERY).page(0, fetch).cursor == 8
    assert calls == [None, 8] and listing.pages() == 2


def test_temp_file_of_a_part_killed_mid_write_is_removed_and_the_page_refetched(tmp_path):
    listing = SharedListing(tmp_path, QUERY)
    stale = listing.dir / ".page-000000.json.gz.4zai_m6a.tmp"
    stale.write_bytes(gzip.compress(json.dumps({"entries": [{"id": 1}]}).encode())[:10])
    resumed = SharedListing(tmp_path, QUERY)
    assert not stale.exists() and resumed.pages() == 0
    assert resumed.page(0, lambda cursor: ([{"id": 3}], 3)).entries == [{"id": 3}]
    assert [p.name for p in listing.dir.iterdir() if p.name.endswith(".tmp")] == []

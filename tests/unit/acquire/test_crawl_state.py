"""The crawl state's open shard: committed samples streamed into a temp tar, cut back to the last
intact commit after a kill or a lost page cache, finished from wherever sealing stopped, and a
state from before streaming (spool) taken over by downloading its unwritten posts again."""

import hashlib
import json
import os
import sqlite3

from awm.acquire.crawl_state import CrawlState
from awm.dist import Part
from awm.shardio.read import iter_tar
from awm.shardwrite import stats_path, tar_bytes

IDS = [19, 18, 17, 16, 15, 14, 13]


def _blob(pid: int) -> bytes:
    return bytes([pid]) * (300 + 211 * pid)  # not block-aligned: members carry padding


def _meta(pid: int) -> dict:
    return {"id": pid, "md5": hashlib.md5(_blob(pid)).hexdigest()}


def _state(out) -> CrawlState:
    state = CrawlState(out, Part())
    state.check_fingerprint({"test": 1})
    state.record_page([(p, "pending", None, _meta(p)["md5"], p, json.dumps(_meta(p))) for p in IDS], 1, done=True)
    state.recover()
    return state


def _append(state: CrawlState, pid: int, shard_size: int = 5) -> None:
    state.append(pid, "png", _blob(pid), 0, _meta(pid), shard_size)


def _kill(state: CrawlState) -> None:
    """What SIGKILL leaves: the descriptor and the connection dropped, nothing finished."""
    if state._open is not None:
        os.close(state._open.fd)
        state._open = None
    state.db.close()


def _expected(ids) -> bytes:
    return tar_bytes([{"__key__": str(p), "png": _blob(p), "json": _meta(p)} for p in ids])


def _status(out) -> dict[int, str]:
    with sqlite3.connect(out / "crawl_state-0of1.sqlite") as db:
        rows = dict(db.execute("SELECT id, status FROM posts").fetchall())
    db.close()
    return rows


def test_a_torn_append_is_cut_and_the_shard_equals_one_written_at_once(tmp_path):
    state = _state(tmp_path)
    for pid in IDS[:3]:
        _append(state, pid)
    temp = state.open_path(0)
    committed = temp.stat().st_size
    _kill(state)
    with open(temp, "ab") as f:  # killed while appending the 4th: its bytes, no commit
        f.write(b"\x01" * 777)
    state = _state(tmp_path)
    assert temp.stat().st_size == committed
    for pid in IDS[3:]:
        _append(state, pid)
    state.close_open()
    assert (tmp_path / "raw-000000.tar").read_bytes() == _expected(IDS[:5])
    assert (tmp_path / "raw-000001.tar").read_bytes() == _expected(IDS[5:])
    assert [s["__key__"] for s in iter_tar(tmp_path / "raw-000001.tar")] == ["14", "13"]
    assert not list(tmp_path.glob(".*")) and set(_status(tmp_path).values()) == {"sharded"}
    state.close()


def test_committed_members_lost_go_back_to_pending(tmp_path):
    """A power cut can lose page-cache bytes the database already counts: those posts (and the
    ones after them) are downloaded again, the intact ones stay."""
    state = _state(tmp_path)
    for pid in IDS[:3]:
        _append(state, pid)
    temp = state.open_path(0)
    _kill(state)
    with open(temp, "r+b") as f:
        f.truncate(temp.stat().st_size - 100)
    state = _state(tmp_path)
    assert _status(tmp_path) == {**dict.fromkeys(IDS, "pending"), 19: "assigned", 18: "assigned"}
    assert temp.read_bytes() == _expected(IDS[:2])[:temp.stat().st_size]
    with open(temp, "r+b") as f:  # a flipped byte inside the image of 18: checked by md5
        f.seek(temp.read_bytes().find(_blob(18)) + 40)
        f.write(b"\x00")
    _kill(state)
    state = _state(tmp_path)
    assert _status(tmp_path)[18] == "pending" and _status(tmp_path)[19] == "assigned"
    for pid in IDS[1:5]:
        _append(state, pid)
    assert (tmp_path / "raw-000000.tar").read_bytes() == _expected(IDS[:5])
    state.close()


def test_sealing_interrupted_anywhere_finishes_on_restart(tmp_path):
    state = _state(tmp_path)
    for pid in IDS[:5]:
        _append(state, pid)  # the 5th seals the shard
    shard = tmp_path / "raw-000000.tar"
    _kill(state)
    stats_path(shard).unlink()  # killed after the rename, before the stats and the record
    with sqlite3.connect(tmp_path / "crawl_state-0of1.sqlite") as db:
        db.execute("UPDATE shards SET done=2")
        db.execute("UPDATE posts SET status='assigned' WHERE status='sharded'")
    db.close()
    state = _state(tmp_path)
    assert stats_path(shard).is_file() and shard.read_bytes() == _expected(IDS[:5])
    assert json.loads(stats_path(shard).read_text())["nsamples"] == 5
    assert [_status(tmp_path)[p] for p in IDS[:5]] == ["sharded"] * 5
    state.close()


def test_a_state_from_before_streaming_downloads_its_spooled_posts_again(tmp_path):
    state = _state(tmp_path)
    state.db.execute("UPDATE posts SET status='ready', ext='png' WHERE id IN (19, 18)")
    spool = tmp_path / "crawl_spool-0of1"
    spool.mkdir()
    (spool / "19.png").write_bytes(_blob(19))
    _kill(state)
    state = _state(tmp_path)
    assert not spool.exists() and set(_status(tmp_path).values()) == {"pending"}
    state.close()

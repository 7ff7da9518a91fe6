"""One vocabulary of skip reasons (awm.skips) across stages, and capped names in the stats."""

import ast
import json
import re
from pathlib import Path

from awm import skips
from awm.shardwrite import ShardStats, write_index

AWM = Path(skips.__file__).resolve().parent
RAISED = re.compile(r'(?:ImageError|FetchError|BadPost)\(f?"(\w+)')
COUNTED = re.compile(r'(?:Item\(rel, |skip(?:ped)?\[)"(\w+)"')


def _reasons_in_source() -> dict[str, str]:
    """Every literal skip reason awm raises, counts or returns from a *skip* function, with where."""
    found = {}
    for path in AWM.rglob("*.py"):
        text = path.read_text()
        for m in [*RAISED.finditer(text), *COUNTED.finditer(text)]:
            found[m.group(1)] = path.name
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef) and "skip" in node.name:
                for ret in ast.walk(node):
                    value = ret.value.elts[0] if isinstance(ret, ast.Return) and isinstance(ret.value, ast.Tuple) \
                        else getattr(ret, "value", None)  # "reason" or ("reason", id it duplicates)
                    if isinstance(ret, ast.Return) and isinstance(value, ast.Constant) and value.value:
                        found[value.value] = f"{path.name}:{node.name}"
    return found


def test_every_reason_awm_uses_is_in_the_vocabulary():
    found = _reasons_in_source()
    assert {"truncated", "undecodable", "duplicate_md5", "near_duplicate", "too_small", "http_"} <= set(found)
    unknown = {r: where for r, where in found.items() if not skips.known(r) and r not in skips.PREFIXES}
    assert not unknown, f"add these to awm/skips.py REASONS: {unknown}"
    assert not skips.known("eval_too_small") and not skips.known("http_") and skips.known("http_503")


def test_names_are_capped_per_reason_and_counts_stay_exact(tmp_path):
    a, b = ShardStats("x-000000.tar"), ShardStats("x-000001.tar")
    a.skip("too_small", 150, [f"a{i}.png" for i in range(150)])
    b.skip("too_small", 1, ["b.png"])
    b.skip("truncated", 2, ["c.png", "d.jpg"])
    assert len(a.to_json()["skipped_names"]["too_small"]) == skips.NAMES_PER_REASON
    for st in (a, b):
        (tmp_path / st.shard).write_bytes(b"")
        (tmp_path / st.shard.replace(".tar", "_stats.json")).write_text(json.dumps(st.to_json()))
    index = json.loads(write_index(tmp_path, "x-").read_text())
    assert index["skipped"] == {"too_small": 151, "truncated": 2}
    assert index["skipped_names"]["too_small"] == [f"a{i}.png" for i in range(100)]  # the first 100, in order
    assert index["skipped_names"]["truncated"] == ["c.png", "d.jpg"]

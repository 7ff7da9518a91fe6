"""Test helpers for experiment tracking: a real MLflow tracking server (sqlite store, 127.0.0.1, a
port the OS picked) and W&B's offline run file read back record by record."""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port nobody listens on now (the OS's choice)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(root: Path, timeout: float = 300) -> Iterator[str]:
    """``mlflow server`` with a sqlite store and served artifacts under ``root``; yields its URI once
    ``/health`` answers, stops it at the end."""
    port = free_port()
    log = (root / "mlflow-server.log").open("w")
    p = subprocess.Popen([str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                          "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1",
                          "--port", str(port), "--workers", "1"], stdout=log, stderr=subprocess.STDOUT)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert p.poll() is None, (root / "mlflow-server.log").read_text()[-3000:]
            try:
                if requests.get(f"{uri}/health", timeout=5).ok:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "mlflow server did not answer: " + (
                root / "mlflow-server.log").read_text()[-3000:]
            time.sleep(0.5)  # polling interval, not a synchronisation: the loop waits for /health
        yield uri
    finally:
        p.terminate()
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        log.close()


def wandb_records(path: Path) -> Iterator[Any]:
    """The protobuf records (W&B's own ``Record`` message) of an offline ``run-<id>.wandb`` file:
    a 7-byte ``:W&B`` header, then LevelDB-log framing (32 KiB blocks; chunks of a record typed
    full/first/middle/last, each with a 7-byte header: CRC, length, type)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    block, pos, parts = 32768, 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        parts += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # full, last
            record = pb.Record()
            record.ParseFromString(parts)
            parts = b""
            yield record


def wandb_history(path: Path) -> list[dict[str, Any]]:
    """The history rows (``wandb.log`` calls) of an offline run file, each with its ``_step``."""
    rows = []
    for r in wandb_records(path):
        if r.WhichOneof("record_type") == "history":
            row = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
            rows.append(row)
    return rows

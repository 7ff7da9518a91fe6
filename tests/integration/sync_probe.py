"""torchrun entry point: ``awm train`` with host-device synchronisations counted between two log steps.

    torchrun --nproc_per_node 2 tests/integration/sync_probe.py OUT FIRST SECOND -- <awm train args>

Every call of ``Tensor.item/__bool__/__float__/__int__/tolist/cpu/numpy`` is counted while the
loop runs the steps after the log at step FIRST up to the log at step SECOND ("window"), and
separately during that second log ("log", which must read the device: it shows the probe sees
reads). Calls made by the loader's code (``awm/data/loader.py``: its CPU augmentation codes) are not
counted. Each rank writes ``OUT/rank<R>.json``.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path

import torch

import awm.data.loader
from awm import cli
from awm.train.trainer import Trainer

COUNTED = ("item", "__bool__", "__float__", "__int__", "tolist", "cpu", "numpy")
LOADER_CODE = awm.data.loader.__file__


def main() -> int:
    out, first, second = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    train_args = sys.argv[sys.argv.index("--") + 1:]
    counts: dict[str, Counter] = {"window": Counter(), "log": Counter()}
    bucket: list[str | None] = [None]

    def instrument(name: str) -> None:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, **kwargs):
            if bucket[0] is not None and sys._getframe(1).f_code.co_filename != LOADER_CODE:
                counts[bucket[0]][name] += 1
            return original(self, *args, **kwargs)

        setattr(torch.Tensor, name, counted)

    for name in COUNTED:
        instrument(name)
    original_log = Trainer.log

    def log(self: Trainer) -> None:
        step = self.state.step
        if step == second:
            bucket[0] = "log"
        original_log(self)
        if step == first:
            bucket[0] = "window"
        elif step == second:
            bucket[0] = None
            out.mkdir(parents=True, exist_ok=True)
            (out / f"rank{os.environ['RANK']}.json").write_text(json.dumps({k: dict(v) for k, v in counts.items()}))

    Trainer.log = log
    return cli.main(["train", *train_args])


if __name__ == "__main__":
    raise SystemExit(main())

"""The luma check of tests/unit/eval/test_fast_metrics.py on all 2^24 colours (the test takes a sample).

Checks fast_metrics.luma and pyiqa's luma on this CPU against the exact value (tests/luma_ties.py)
and prints how many colours are ties, per colour space (a failing check raises: no JSON then).
Run it under other SIMD paths too, e.g.
``MKL_ENABLE_INSTRUCTIONS=SSE4_2 python tests/benchmarks/bench_luma.py``. ~1 min on 2 cores.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from luma_ties import check_luma, levels  # noqa: E402


def main() -> None:
    from pyiqa.utils.color_util import to_y_channel

    from awm.eval.fast_metrics import luma
    from awm.imageio import to_tensor

    t0 = time.perf_counter()
    ties = {"yiq": 0, "ycbcr": 0}
    for red in range(0, 256, 16):  # 2^20 colours at a time, to bound memory
        idx = np.arange(red << 16, (red + 16) << 16, dtype=np.uint32)
        rgb = np.stack([idx >> 16, (idx >> 8) & 255, idx & 255], -1).astype(np.uint8)[None]
        for space in ties:
            ties[space] += int(levels(rgb, space)[1].sum())
            for scale255 in (True, False):
                check_luma(luma(rgb, space, scale255), rgb, space, scale255, f"fast_metrics.luma {space}")
                torch_y = to_y_channel(to_tensor(rgb), 255 if scale255 else 1, space)[0, 0].double().numpy()
                check_luma(torch_y, rgb, space, scale255, f"pyiqa {space}")
    print(f"all 2^24 colours within float32 rounding of the exact luma; tie colours: {ties} "
          f"({time.perf_counter() - t0:.0f} s)")
    print(json.dumps({"colours": 1 << 24, "checked": ["fast_metrics.luma", "pyiqa to_y_channel"],
                      "scales": ["255", "1"], "within_float32_rounding": True, "tie_colours": ties,
                      "seconds": round(time.perf_counter() - t0, 1)}))


if __name__ == "__main__":
    main()

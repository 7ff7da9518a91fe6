"""The numeric claims of test_fast_metrics.py under the other code paths this CPU offers.

MKL, ATen and NumPy pick SIMD kernels by CPU (an AVX-512 Xeon and an AMD EPYC differ in the last
bits of float32 sums and matmuls); each switch below forces another path in a fresh process (the
libraries read them at load), so one machine checks what another would take.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
PATHS = {
    "mkl-sse4_2": {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
    "mkl-avx2": {"MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "aten-default": {"ATEN_CPU_CAPABILITY": "default"},
    "aten-avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "numpy-no-avx512": {"NPY_DISABLE_CPU_FEATURES": "X86_V4,AVX512_ICL,AVX512_SPR"},
    "openblas-haswell": {"OPENBLAS_CORETYPE": "Haswell"},
}


@pytest.mark.slow
@pytest.mark.parametrize("switches", PATHS.values(), ids=PATHS.keys())
def test_fast_metrics_claims_hold_on_another_simd_path(switches: dict[str, str]) -> None:
    env = {**os.environ, **switches, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(HERE / "test_fast_metrics.py"),
           "-k", "not real_images"]  # the real images add time, not another code path
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"under {switches}:\n{r.stdout[-4000:]}\n{r.stderr[-2000:]}"
    assert " passed" in r.stdout and " skipped" not in r.stdout, r.stdout[-2000:]

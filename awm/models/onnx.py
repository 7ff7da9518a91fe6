"""ONNX: export AWM's architectures, verify them against torch, and run them through onnxruntime.

Export goes through the exporter torch recommends (``torch.onnx.export(dynamo=True)``, i.e.
torch.export + onnxscript) with dynamic batch, height and width, and is then verified: onnxruntime
on CPU must reproduce the torch output of the same weights (PSNR >= ``FP32_FLOOR_DB``) on noise and
on generated anime content at two input sizes, so a file whose dynamic shapes do not really work is
never written. How each architecture exports was measured (torch 2.14.1, onnxscript 0.7,
onnxruntime 1.32, the ``-tiny`` variants) and is recorded in :data:`PLANS`: refusals carry the
reason, fall-backs say why.

:class:`OnnxModule` makes an onnxruntime session look like the torch module ``awm upscale`` tiles
with (RGB float [0, 1] NCHW in and out), so tiling, alpha, 16-bit and output handling stay one
code path and the backend is a detail of :func:`load_onnx`.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from awm import __version__
from awm.dist import NoGPUError
from awm.log import get_logger
from awm.models.loaded import CheckpointError, LoadedModel

log = get_logger(__name__)

OPSET = 18
FP32_FLOOR_DB = 50.0
# fp16 weights and activations against the fp32 torch output: the -tiny models and the demo's Compact
# reach ~65-80 dB (tests/benchmarks/bench_export.py); the floor leaves room for deeper nets, whose fp16
# error grows with depth.
FP16_FLOOR_DB = 40.0
Precision = Literal["fp32", "fp16", "bf16"]
META_PREFIX = "awm_"


@dataclass(frozen=True)
class Plan:
    """How one spandrel architecture exports: ``batch`` dynamic or fixed at 1, or ``refused``."""

    batch: Literal["dynamic", "fixed"] | None
    reason: str = ""
    no_fp16: str = ""  # why a half-precision file cannot be made, when it cannot


PLANS: dict[str, Plan] = {
    "Compact": Plan("dynamic"),
    "ESRGAN": Plan("dynamic"),
    "SPAN": Plan("dynamic", "exported with each Conv3XC fused into its eval conv once: spandrel re-derives "
                            "the fused weights inside every eval forward, which torch.export cannot trace "
                            "(it crashes in decomposition)"),
    "HAT": Plan("fixed", "batch fixed at 1 (height and width stay dynamic): with a dynamic batch onnxruntime "
                         "reproduces torch at the example's batch (~128-145 dB at batch 2) but only at "
                         "49.7-72 dB at batch 1, on either side of the 50 dB floor depending on the machine"),
    "SwinIR": Plan("fixed", "batch fixed at 1 (height and width stay dynamic): spandrel's window_reverse "
                            "computes the batch with int() of a float, which the exporter specialises to "
                            "the example's batch; onnxruntime then fails on any other batch",
                  no_fp16="spandrel's SwinIR builds its attention mask in float32 inside forward "
                          "(calculate_mask), so a half-precision model multiplies float16 by float32 in bmm"),
    "DAT": Plan(None, "exports, but onnxruntime fails in LayerNormalization ('Size of X.shape[axis:] must "
                      "be at least 1, got 0') on every input, also with the batch fixed at 1: the exporter "
                      "specialises DAT's split-window reshapes to the example input"),
    "GRL": Plan("fixed", "batch fixed at 1 (height and width stay dynamic): with a dynamic batch onnxruntime "
                         "reproduces torch only at the example's batch (141 dB at batch 2, 29-31 dB at batch 1), "
                         "the exporter specialising a batch-dependent reshape of the stripe/anchor attention; "
                         "export takes ~2 min for grl-tiny on 2 cores",
               no_fp16="spandrel's GRL rebuilds its relative-coordinate tables in float32 inside forward for "
                       "each input size (set_table_index_mask), so a half-precision model feeds float32 into its "
                       "half cpb_mlp (eager torch fails the same way)"),
}


class ExportError(RuntimeError):
    """An architecture or precision that cannot be exported and verified; the message says why."""


def floor_db(precision: Precision) -> float:
    """The PSNR (dB) an exported file of ``precision`` must reach against the fp32 torch output."""
    return FP32_FLOOR_DB if precision == "fp32" else FP16_FLOOR_DB


def plan_for(spandrel_id: str, precision: Precision = "fp32") -> Plan:
    """The export plan of an architecture; ExportError with the measured reason when refused."""
    plan = PLANS.get(spandrel_id)
    if plan is None:
        raise ExportError(f"{spandrel_id}: no ONNX export plan (measured: {', '.join(PLANS)})")
    if plan.batch is None:
        raise ExportError(f"{spandrel_id} cannot be exported to ONNX: {plan.reason}")
    if precision != "fp32" and plan.no_fp16:
        raise ExportError(f"{spandrel_id} cannot be exported in {precision}: {plan.no_fp16}")
    return plan


class _FusedConv3XC(nn.Module):
    """SPAN's Conv3XC as its eval path: one 3x3 conv with the branches' weights folded in."""

    def __init__(self, block: nn.Module):
        super().__init__()
        block.update_params()
        self.conv = block.eval_conv
        self.relu = bool(block.has_relu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return nn.functional.leaky_relu(y, negative_slope=0.05) if self.relu else y


def exportable(module: nn.Module) -> nn.Module:
    """A copy of ``module`` in eval mode that torch.export can trace (SPAN's convs fused)."""
    from spandrel.architectures.SPAN.__arch.span import Conv3XC

    module = copy.deepcopy(module).eval().float()
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Conv3XC):
                setattr(parent, name, _FusedConv3XC(child))
    return module


def export_onnx(module: nn.Module, spandrel_id: str, out: Path, example_side: int, precision: Precision = "fp32",
                metadata: dict[str, Any] | None = None, simplify: bool = True) -> dict[str, Any]:
    """Write ``out`` (ONNX, opset :data:`OPSET`) for ``module``; returns what was done. Not yet verified."""
    plan = plan_for(spandrel_id, precision)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    net = exportable(module).to(dtype)  # fp16/bf16 files take and return that type (chaiNNer's convention)
    x = torch.rand(2 if plan.batch == "dynamic" else 1, 3, example_side, example_side, dtype=dtype)
    dyn = torch.export.Dim.DYNAMIC
    shapes = {"x": {0: dyn, 2: dyn, 3: dyn} if plan.batch == "dynamic" else {2: dyn, 3: dyn}}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    quiet = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in quiet]
    try:
        for lg in quiet:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(net, (x,), dynamo=True, opset_version=OPSET, input_names=["input"],
                                        output_names=["output"], dynamic_shapes=shapes, verbose=False)
        model = program.model_proto
        slimmed = False
        if simplify:
            import onnxslim

            model, slimmed = onnxslim.slim(model), True
        _set_metadata(model, {**(metadata or {}), "precision": precision, "batch": plan.batch,
                              "opset": OPSET, "awm_version": __version__})
        import onnx

        onnx.save(model, str(tmp))
        os.replace(tmp, out)
    except ExportError:
        raise
    except Exception as e:  # noqa: BLE001 - any exporter failure becomes a refusal with its cause
        raise ExportError(f"{spandrel_id}: torch.onnx.export failed: {type(e).__name__}: {str(e)[:400]}") from e
    finally:
        tmp.unlink(missing_ok=True)
        for lg, level in zip(quiet, levels, strict=True):
            lg.setLevel(level)
    return {"file": out.name, "opset": OPSET, "precision": precision, "batch": plan.batch, "simplified": slimmed,
            "exporter": f"torch.onnx.export(dynamo=True) torch {torch.__version__}", "note": plan.reason}


def _set_metadata(model: Any, meta: dict[str, Any]) -> None:
    del model.metadata_props[:]
    for k, v in sorted(meta.items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = META_PREFIX + k, str(v)


def runtime_version() -> str:
    """The installed onnxruntime's version (named in refusals: kernel coverage differs by version)."""
    import onnxruntime as ort

    return ort.__version__


def read_metadata(session: Any) -> dict[str, str]:
    """The ``awm_*`` metadata of an onnxruntime session's model, prefix stripped."""
    custom = session.get_modelmeta().custom_metadata_map
    return {k[len(META_PREFIX):]: v for k, v in custom.items() if k.startswith(META_PREFIX)}


GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
INSTALL_GPU = ("pip uninstall -y onnxruntime && pip install onnxruntime-gpu (the GPU build replaces the CPU "
               "one: with both installed one overwrites the other)")


def device_index(device: str) -> int:
    """The GPU of ``cuda:N`` (N), or of ``cuda`` (torch's current device: this rank's once
    ``awm.dist.init`` set it, so every rank of a multi-GPU job does not land on GPU 0)."""
    if ":" in device:
        return int(device.split(":", 1)[1])
    return torch.cuda.current_device() if torch.cuda.is_available() else 0


def trt_cache_dir(model: Path) -> Path:
    """Where TensorRT keeps the engines it builds for ``model``: beside it (``<model>.trt/``) when
    that folder is writable, else ``$XDG_CACHE_HOME/awm/tensorrt`` (engines are keyed by model and
    shape inside). Without a cache every process rebuilds each engine, minutes per tile shape."""
    beside = model.with_name(model.name + ".trt")
    if os.access(model.parent, os.W_OK):
        return beside
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "awm" / "tensorrt"


def providers(device: str, available: list[str] | None = None,
              trt_cache: Path | None = None) -> list[str | tuple[str, dict[str, Any]]]:
    """Execution providers for ``device``: CPU alone for the CPU; for ``cuda[:N]`` TensorRT (when
    offered, with an engine cache in ``trt_cache``) then CUDA on GPU N (``device_id``), CPU last for
    the few nodes the GPU providers do not implement.

    A CUDA request on an onnxruntime without the CUDA provider (the CPU-only ``onnxruntime``
    package offers Azure and CPU) raises :class:`awm.dist.NoGPUError` saying how to install
    ``onnxruntime-gpu``, instead of running silently on the CPU. ``available``: the providers the
    installed onnxruntime offers (default: asked from it).
    """
    if not device.startswith("cuda"):
        return ["CPUExecutionProvider"]
    if available is None:
        import onnxruntime as ort

        available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        raise NoGPUError(f"device {device} asks onnxruntime for a GPU but onnxruntime {runtime_version()} offers "
                         f"only {', '.join(available)} (the CPU build): {INSTALL_GPU}; or choose --device cpu")
    index = device_index(device)
    out: list[str | tuple[str, dict[str, Any]]] = []
    if "TensorrtExecutionProvider" in available and trt_cache is not None:
        out.append(("TensorrtExecutionProvider", {
            "device_id": index, "trt_engine_cache_enable": True, "trt_engine_cache_path": str(trt_cache),
            "trt_timing_cache_enable": True, "trt_timing_cache_path": str(trt_cache)}))
    return [*out, ("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]


def check_providers(used: list[str], device: str) -> None:
    """NoGPUError unless a session for a CUDA ``device`` really runs on a GPU provider: onnxruntime
    drops a provider whose libraries (CUDA, cuDNN, TensorRT) fail to load and goes on with the CPU."""
    if device.startswith("cuda") and not any(p in used for p in GPU_PROVIDERS):
        raise NoGPUError(f"device {device}: onnxruntime {runtime_version()} created the session with "
                         f"{', '.join(used)} only: its CUDA provider did not load (CUDA/cuDNN libraries of the "
                         f"versions onnxruntime-gpu was built for missing, or no GPU visible); see onnxruntime's "
                         f"log above, or choose --device cpu")


def session(path: str | Path, device: str = "cpu", threads: int | None = None) -> Any:
    """An onnxruntime session for ``path`` on ``device`` with ``threads`` intra-op threads (default torch's).

    On a CUDA device the session is checked to run on a GPU provider (:func:`check_providers`)
    and its CPU fallback is disabled: a run that fails on the GPU raises instead of being retried
    on the CPU at a fraction of the speed.
    """
    import onnxruntime as ort

    path = Path(path)
    cuda = device.startswith("cuda")
    cache = trt_cache_dir(path) if cuda else None
    wanted = providers(device, trt_cache=cache)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if cache is not None and any(isinstance(p, tuple) and p[0] == "TensorrtExecutionProvider" for p in wanted):
        cache.mkdir(parents=True, exist_ok=True)
        log.warning("TensorRT builds an engine on the first run of each input shape (minutes); later runs load "
                    "it from %s", cache)
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=wanted)
    if cuda:
        check_providers(sess.get_providers(), device)
        sess.disable_fallback()
    return sess


class OnnxModule(nn.Module):
    """An onnxruntime session behind the torch module interface: float32 NCHW in, float32 out.

    Inputs are cast to the file's input type (float16 for fp16 exports); a fixed-batch file runs
    the batch one image at a time. With the CUDA/TensorRT providers inputs still pass through host
    memory (onnxruntime copies them to the device); IO binding would avoid that copy (untested here:
    no GPU on the development machine).
    """

    def __init__(self, sess: Any):
        super().__init__()
        self.session = sess
        inp = sess.get_inputs()[0]
        self.input_name = inp.name
        self.np_dtype = np.float16 if "float16" in inp.type else np.float32
        self.fixed_batch = isinstance(inp.shape[0], int)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arr = x.detach().to("cpu", torch.float32).numpy().astype(self.np_dtype, copy=False)
        parts = [arr[i:i + 1] for i in range(arr.shape[0])] if self.fixed_batch else [arr]
        ys = [self.session.run(None, {self.input_name: p})[0] for p in parts]
        y = np.concatenate(ys) if len(ys) > 1 else ys[0]
        return torch.from_numpy(y.astype(np.float32, copy=False)).to(x.device)


def load_onnx(path: str | Path, device: str = "cpu") -> LoadedModel:
    """A LoadedModel for an ONNX file: AWM's metadata when present, else scale probed on a 32 px input."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        sess = session(path, device)
    except NoGPUError:
        raise
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise CheckpointError(f"{path}: onnxruntime cannot load it ({str(e)[:300]})") from None
    meta = read_metadata(sess)
    module = OnnxModule(sess)
    if "scale" in meta:
        scale = int(meta["scale"])
    else:
        with torch.no_grad():
            scale = int(module(torch.rand(1, 3, 32, 32)).shape[-1]) // 32
    multiple, minimum = int(meta.get("size_multiple", 1)), int(meta.get("size_min", 1))
    arch = meta.get("arch", "onnx")
    return LoadedModel(module, arch, scale, {}, False, False, multiple, minimum, 3, "onnx",
                       {"file": str(path), "providers": sess.get_providers(), **meta})


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB, peak 1) of two float outputs, not clamped: an untrained net's out-of-range values count too."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def verification_inputs(multiple: int, minimum: int, batch: str) -> list[tuple[str, torch.Tensor]]:
    """Noise and generated anime content at two sizes (multiples of ``multiple``), batch 2 where dynamic."""
    from awm.data import synth
    from awm.imageio import to_tensor

    def side(v: int) -> int:
        return max(-(-v // multiple) * multiple, -(-minimum // multiple) * multiple)

    sizes = [(side(40), side(56)), (side(72), side(48))]
    gen = torch.Generator().manual_seed(0)
    out = []
    for k, (h, w) in enumerate(sizes):
        n = 2 if batch == "dynamic" else 1
        out.append((f"noise {n}x{h}x{w}", torch.rand(n, 3, h, w, generator=gen)))
        out.append((f"synth 1x{h}x{w}", to_tensor(synth.generate(k, w, h))))
    return out


def verify(module: nn.Module, onnx_path: Path, multiple: int, minimum: int, batch: str,
           extra: list[tuple[str, torch.Tensor]] = ()) -> dict[str, float]:
    """PSNR (dB) of onnxruntime (CPU) against the fp32 torch module, per verification input."""
    sess = session(onnx_path, "cpu")
    ort_module = OnnxModule(sess)
    ref = module.eval().float()
    result = {}
    with torch.inference_mode():
        for name, x in [*verification_inputs(multiple, minimum, batch), *extra]:
            result[name] = round(psnr(ref(x).numpy(), ort_module(x).numpy()), 2)
    return result

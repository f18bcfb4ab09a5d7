"""What a trained detector costs to run: parameters, FLOPs, latency, peak memory and
an ONNX export checked against PyTorch.

What is measured is the network as deployed: the student detector alone (no
teacher, no distillation adapters), built from its config and loaded from the
run's checkpoint, in eval mode, on one image of the dataset's test size. The
forward is mmdet's ``tensor`` mode: backbone, neck and head up to the raw
per-level outputs, which is also what the ONNX file holds. Box decoding and NMS
are not included (they depend on the number of candidate boxes, not the model).

- parameters: every parameter of that network (buffers such as BatchNorm's
  running statistics are not parameters).
- FLOPs: mmengine's :class:`~mmengine.analysis.FlopAnalyzer`, the counter mmdet's
  ``tools/analysis_tools/get_flops.py`` uses; like it, one fused multiply-add
  counts as one FLOP.
- input size: the test pipeline's ``Resize(scale=(long, short), keep_ratio)`` of
  an image of that aspect, padded to a multiple of 32 as the data preprocessor
  pads: ``(1333, 800)`` is a 800 x 1344 input.
- latency: batch 1, after warm-up forwards, the median and the 90th percentile of
  timed forwards (on CUDA each one synchronised); the device and the CPU thread
  count are recorded with it.
- peak memory of inference: on CUDA the peak allocated by one forward over what
  was allocated before it; on CPU the peak of the bytes PyTorch's allocator held
  for that forward's tensors and workspaces, from the profiler's memory events
  (the process's resident size says nothing useful: glibc keeps freed pages).
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

#: The data preprocessor pads every input to a multiple of this.
PAD_DIVISOR = 32
#: Prefixes of a detector's own weights in a (distiller's) checkpoint.
DETECTOR_PREFIXES = ("backbone.", "neck.", "bbox_head.")


class CostError(RuntimeError):
    """The model could not be measured (its checkpoint does not fit its config)."""


@dataclass(frozen=True)
class Latency:
    median_ms: float
    p90_ms: float
    runs: int
    warmup: int
    device: str
    threads: int


@dataclass(frozen=True)
class OnnxReport:
    status: Literal["ok", "failed"]
    #: The file, when the export succeeded.
    path: str | None = None
    #: Largest |onnxruntime - PyTorch| over every raw head output.
    max_abs_diff: float | None = None
    #: Why it failed (the exception's message).
    error: str | None = None
    opset: int | None = None
    seconds: float = 0.0


@dataclass
class ModelCost:
    params: int
    flops: int
    #: (height, width) of the measured input.
    input_shape: tuple[int, int]
    latency: Latency
    peak_memory_mb: float
    onnx: OnnxReport | None = None
    #: Seconds the whole measurement took, and each part of it.
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["input_shape"] = list(self.input_shape)
        return data


def network_input_shape(img_scale: Sequence[int]) -> tuple[int, int]:
    """``(height, width)`` of the network input for a ``(long, short)`` test scale:
    a landscape image resized to fit it, padded to a multiple of PAD_DIVISOR."""
    long_side, short_side = (int(v) for v in img_scale)
    return _pad(short_side), _pad(long_side)


def _pad(size: int) -> int:
    return int(math.ceil(size / PAD_DIVISOR) * PAD_DIVISOR)


class TensorForward(nn.Module):
    """A detector's ``tensor``-mode forward with its per-level outputs flattened into
    one tuple: what the FLOP counter, the timer and the ONNX exporter see."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, inputs: Tensor) -> tuple[Tensor, ...]:
        forward: Any = self.detector._forward  # mmdet's tensor mode (untyped)
        return tuple(flatten(forward(inputs)))


def flatten(outputs: Any) -> list[Tensor]:
    if isinstance(outputs, Tensor):
        return [outputs]
    return [t for item in outputs if item is not None for t in flatten(item)]


def count_params(module: nn.Module) -> int:
    """Parameters of ``module`` (each shared tensor once)."""
    return sum(p.numel() for p in module.parameters())


def count_flops(module: nn.Module, inputs: Tensor) -> int:
    """mmengine's FLOP count of one forward of ``module`` on ``inputs``."""
    from mmengine.analysis import FlopAnalyzer

    analyzer = FlopAnalyzer(module, (inputs,))
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    return int(analyzer.total())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_forward(
    module: nn.Module,
    inputs: Tensor,
    *,
    warmup: int = 5,
    runs: int = 30,
    min_runs: int = 3,
    budget_s: float = 20.0,
) -> Latency:
    """Batch-1 latency: up to ``warmup`` untimed forwards (no more once they took a
    quarter of ``budget_s``), then up to ``runs`` timed ones (fewer, but
    at least ``min_runs``, once they took ``budget_s``). A paper-sized detector on a
    small CPU takes seconds a forward: it gets one warm-up and three timed runs."""
    device = inputs.device
    times: list[float] = []
    warmed = 0
    with torch.inference_mode():
        began = time.perf_counter()
        while warmed < warmup:
            module(inputs)
            _sync(device)
            warmed += 1
            if time.perf_counter() - began > budget_s / 4:
                break
        started = time.perf_counter()
        while len(times) < runs:
            begin = time.perf_counter()
            module(inputs)
            _sync(device)
            times.append((time.perf_counter() - begin) * 1000.0)
            if len(times) >= min_runs and time.perf_counter() - started > budget_s:
                break
    ordered = sorted(times)
    return Latency(
        median_ms=statistics.median(ordered),
        p90_ms=_percentile(ordered, 0.9),
        runs=len(ordered),
        warmup=warmed,
        device=describe_device(device),
        threads=torch.get_num_threads(),
    )


def _percentile(ordered: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def describe_device(device: torch.device) -> str:
    """``cuda:0 (NVIDIA H200)`` or ``cpu (<model name>)``: what a latency was measured on."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return f"cpu ({_cpu_name()})"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "unknown"


def peak_memory_mb(module: nn.Module, inputs: Tensor) -> float:
    """Peak memory one forward needs beyond what was allocated before it, in MiB."""
    with torch.inference_mode():
        if inputs.device.type == "cuda":
            torch.cuda.synchronize(inputs.device)
            before = torch.cuda.memory_allocated(inputs.device)
            torch.cuda.reset_peak_memory_stats(inputs.device)
            module(inputs)
            torch.cuda.synchronize(inputs.device)
            peak = torch.cuda.max_memory_allocated(inputs.device) - before
            return peak / 2**20
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            module(inputs)
    return cpu_peak_bytes(prof.events()) / 2**20


def cpu_peak_bytes(events: Any) -> int:
    """The high-water mark of the bytes held, from the profiler's events: each event's
    own (``self``) allocations counted at its start and its own frees at its end (a
    parent op that frees a workspace its child allocated does so when it returns),
    in time order, events that share a timestamp in their recorded order."""
    changes = []
    for e in events:
        delta = e.self_cpu_memory_usage
        if delta:
            changes.append((e.time_range.start if delta > 0 else e.time_range.end, delta))
    changes.sort(key=lambda change: change[0])  # stable: ties keep the recorded order
    held = peak = 0
    for _, delta in changes:
        held += delta
        peak = max(peak, held)
    return peak


def export_onnx(module: nn.Module, inputs: Tensor, path: Path, *, opset: int = 17) -> OnnxReport:
    """Export ``module`` (a :class:`TensorForward`) to ``path`` and compare
    onnxruntime's outputs with PyTorch's on ``inputs``; a failure is reported, not
    raised (an exporter that cannot handle an op must not fail the job)."""
    started = time.perf_counter()
    path = Path(path)
    try:
        import onnxruntime

        path.parent.mkdir(parents=True, exist_ok=True)
        cpu_module, cpu_inputs = module.to("cpu").eval(), inputs.to("cpu")
        with torch.inference_mode():
            expected = [t.numpy() for t in cpu_module(cpu_inputs)]
        names = [f"out{i}" for i in range(len(expected))]
        partial = path.with_name(path.name + ".part")
        torch.onnx.export(
            cpu_module,
            (cpu_inputs,),
            str(partial),
            input_names=["image"],
            output_names=names,
            opset_version=opset,
            dynamo=False,
        )
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        session = onnxruntime.InferenceSession(
            str(partial), options, providers=["CPUExecutionProvider"]
        )
        got = session.run(names, {"image": cpu_inputs.numpy()})
        if len(got) != len(expected):
            raise CostError(f"ONNX model has {len(got)} outputs, PyTorch {len(expected)}")
        diff = 0.0
        for mine, theirs in zip(expected, got, strict=True):
            if mine.shape != theirs.shape:
                raise CostError(f"ONNX output shape {theirs.shape} != PyTorch's {mine.shape}")
            finite = np.isfinite(mine)
            if not np.array_equal(finite, np.isfinite(theirs)) or not np.array_equal(
                mine[~finite], theirs[~finite], equal_nan=True
            ):
                raise CostError("ONNX and PyTorch disagree on non-finite outputs")
            if finite.any():
                diff = max(diff, float(np.abs(mine[finite] - theirs[finite]).max()))
        os.replace(partial, path)
        return OnnxReport("ok", str(path), diff, opset=opset, seconds=time.perf_counter() - started)
    except Exception as exc:  # noqa: BLE001 - any exporter failure is a warning
        for leftover in (path.with_name(path.name + ".part"), path):
            leftover.unlink(missing_ok=True)
        message = f"{type(exc).__name__}: {exc}".strip()[:2000]
        return OnnxReport(
            "failed", error=message, opset=opset, seconds=time.perf_counter() - started
        )


def load_detector(detector_cfg: dict[str, Any], checkpoint: str | os.PathLike) -> nn.Module:
    """The plain detector of ``detector_cfg`` with the detector weights of ``checkpoint``
    (a plain detector's or a distiller's: its adapters are dropped), in eval mode.

    Raises:
        CostError: the checkpoint lacks some of the detector's weights or has others
            of the wrong shape.
    """
    from mmdet.registry import MODELS

    import pgd_core.compat  # noqa: F401  (registers mmdet, trusted local checkpoints)

    model = MODELS.build(detector_cfg)
    loaded = torch.load(checkpoint, map_location="cpu", weights_only=False)
    state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else loaded
    weights = {k: v for k, v in state.items() if k.startswith(DETECTOR_PREFIXES)}
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    if missing:
        raise CostError(
            f"checkpoint {checkpoint} lacks {len(missing)} of the detector's weights "
            f"(first: {missing[0]})"
        )
    wrong = [k for k in own if tuple(own[k].shape) != tuple(weights[k].shape)]
    if wrong:
        raise CostError(f"checkpoint {checkpoint}: {wrong[0]} has another shape")
    model.load_state_dict({k: weights[k] for k in own}, strict=True)
    return model.eval()


def measure(
    detector: nn.Module,
    input_shape: tuple[int, int],
    *,
    device: str | torch.device = "cpu",
    onnx_path: Path | None = None,
    warmup: int = 5,
    runs: int = 30,
    budget_s: float = 20.0,
    seed: int = 0,
) -> ModelCost:
    """Every cost of ``detector`` on one ``(height, width)`` input (see the module)."""
    started = time.perf_counter()
    device = torch.device(device)
    module = TensorForward(detector).eval().to(device)
    generator = torch.Generator().manual_seed(seed)
    # The network sees the data preprocessor's output: normalised, about N(0, 1).
    inputs = torch.randn((1, 3, *input_shape), generator=generator).to(device)
    timings: dict[str, float] = {}

    def timed(part: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        begin = time.perf_counter()
        value = fn(*args, **kwargs)
        timings[part] = time.perf_counter() - begin
        return value

    params = count_params(module)
    flops = timed("flops_s", count_flops, module, inputs)
    latency = timed(
        "latency_s", time_forward, module, inputs, warmup=warmup, runs=runs, budget_s=budget_s
    )
    peak = timed("memory_s", peak_memory_mb, module, inputs)
    cost = ModelCost(params, flops, tuple(input_shape), latency, peak)  # type: ignore[arg-type]
    if onnx_path is not None:
        cost.onnx = timed("onnx_s", export_onnx, module, inputs, onnx_path)
        if cost.onnx.status == "failed":
            cost.warnings.append(f"ONNX export failed: {cost.onnx.error}")
        module.to(device)
    cost.timings = timings
    cost.seconds = time.perf_counter() - started
    return cost

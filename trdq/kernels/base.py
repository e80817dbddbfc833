"""The contract every kernel backend implements.

Notation (as in nunchaku's kernel wrappers): M rows of activations (tokens x batch,
flattened with the batch dimension outermost), K input channels, N output channels.

Conventions every backend follows (see trdq/rotation.py and trdq/primitives.py):

- Weights reach ``pack`` already smoothed, rotated and quantized: ``qweight`` is
  ``[N, K]`` int8 holding symmetric integers in ``[-(2^(b-1)-1), 2^(b-1)-1]`` (for the
  fp8 preset it is ``torch.float8_e4m3fn``) and ``weight_scale`` is ``[N]`` float32, so
  ``W_rot ~= qweight * weight_scale[:, None]``.
- Rotation is block-diagonal normalized Hadamard on the K axis, block size
  ``act.rotation_block`` (a power of two dividing K). It is symmetric and orthogonal,
  so ``x W^T = (x R)(W R)^T``; the weight side is folded offline, the activation side
  is applied online by the backend.
- Smoothing: ``x / act.smooth_divisor`` (per K channel) before rotation; the weights
  were multiplied by the same vector offline.
- Activation quantization is symmetric: static mode uses ``act.row_scale`` ([M], one
  scale per row, already chosen per timestep group and per CFG half); dynamic mode uses
  ``absmax(row) * act.clip_ratio / qmax`` per row (per token).
- Centring (dynamic mode, ``act.weight_sum`` set): only on backends with
  ``fuses_centering``; they subtract each row's mean before smoothing and add
  ``mean x act.weight_sum`` to the output. Elsewhere ``QuantLinear`` does it around the call.
- CFG-delta (dynamic mode, ``act.cfg_delta_half`` > 0): only on backends with
  ``fuses_cfg_delta``; they quantize each row ``r >= cfg_delta_half`` as
  ``x[r] - x[r - cfg_delta_half]`` before anything else (centring included) and return
  those rows as ``W d + b``, or, with ``restores_cfg_delta``, as served, ``y_u + W d``.
  Elsewhere ``QuantLinear`` subtracts before the call and adds the uncond output back after.

``linear`` does: smooth -> rotate -> quantize -> low-bit GEMM -> rescale (+ bias), and
returns ``[M, N]`` in the dtype of ``x``.
"""

from __future__ import annotations

import abc
import contextlib
import contextvars
import functools
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # pragma: no cover - typing only
    from trdq.config import QuantConfig

__all__ = [
    "OUTPUT_ACTIVATIONS",
    "ActQuant",
    "BackendUnavailableError",
    "KernelBackend",
    "apply_output_activation",
    "autotune_gpu_time",
    "capture_graph",
    "check_output_activation",
    "launches_recorded",
    "next_pow2",
    "recording_launches",
    "restore_cfg_delta",
]


#: True while the kernels launched in this thread are being recorded into a CUDA graph (or
#: run the eager call that warms one up). A ContextVar: the server's per-GPU workers are
#: threads, each replaying its own graphs.
_RECORDING_LAUNCHES = contextvars.ContextVar("trdq_recording_launches", default=False)


@contextlib.contextmanager
def recording_launches():
    """Marks launches whose host cost is paid once: those recorded into a CUDA graph, and
    the eager call before the capture (so anything tuned for the recorded variant is tuned
    outside the capture). A kernel may then pick a variant that costs more host time per
    launch for less GPU time: the W8A8 GEMM's TMA loads, whose two descriptors are built
    and encoded on the host at every launch, which makes a step bound by the host (no
    graphs) slower (docs/KERNELS.md)."""
    token = _RECORDING_LAUNCHES.set(True)
    try:
        yield
    finally:
        _RECORDING_LAUNCHES.reset(token)


def launches_recorded() -> bool:
    """Whether this thread is inside ``recording_launches``."""
    return _RECORDING_LAUNCHES.get()


#: Held by every launch of an autotuned Triton kernel and by every CUDA graph capture.
#: Triton's autotuner keeps per-call state on the kernel object, so two threads launching
#: the same autotuned kernel at once (one engine worker per GPU) corrupt it; and PyTorch
#: supports one graph capture at a time per process, while both the autotuners' timer and
#: the replayed denoiser (``CudaGraphForward``) capture. Re-entrant: a capture launches
#: kernels, and a kernel's first launch may tune, i.e. capture. A launch is asynchronous
#: and takes microseconds; tuning and capturing happen once per key.
TRITON_LAUNCH_LOCK = threading.RLock()

#: one side stream per GPU that captures run on (under TRITON_LAUNCH_LOCK, one at a time)
_CAPTURE_STREAMS: dict[torch.device, torch.cuda.Stream] = {}


@contextlib.contextmanager
def capture_graph(graph: torch.cuda.CUDAGraph, device: torch.device, pool=None):
    """Records the CUDA work of the block into ``graph``, on a side stream of ``device``.

    ``torch.cuda.graph`` on its own captures on one stream for the whole process, made on
    whichever GPU captured first; work for another GPU then runs outside the capture, which
    fails it (seen on two H100s: every capture on the second GPU failed). Here: one stream
    per device, one capture at a time (``TRITON_LAUNCH_LOCK``), and ``thread_local`` capture
    mode, so the other GPUs' workers keep calling CUDA meanwhile. A capture that fails
    leaves ``torch.cuda.graph`` inside its stream context (its exit raises before leaving
    it): this thread's current device and stream are restored, so the caller can go on
    eagerly."""
    with TRITON_LAUNCH_LOCK:
        stream = _CAPTURE_STREAMS.get(device)
        if stream is None:
            stream = _CAPTURE_STREAMS[device] = torch.cuda.Stream(device)
        prior_device, prior_stream = torch.cuda.current_device(), torch.cuda.current_stream(device)
        try:
            with torch.cuda.graph(graph, pool=pool, stream=stream,
                                  capture_error_mode="thread_local"):
                yield
        except BaseException:
            torch.cuda.set_stream(prior_stream)
            torch.cuda.set_device(prior_device)
            raise


def autotune_gpu_time(kernel_call, quantiles, rep_ms: float = 20.0, replays: int = 10):
    """The timer every Triton autotuner here uses (``triton.autotune(do_bench=...)``): GPU
    time of the call replayed from a CUDA graph. Triton's default times back-to-back
    launches, which the host side of a call bounds for kernels this short, so it ranks
    tiles by host noise rather than by kernel time (docs/KERNELS.md). Triton's own graph timer
    (``do_bench_cudagraph``) captures through ``torch.cuda.graph``'s one process-wide
    stream, which fails on any GPU but the first that captured: this one captures through
    ``capture_graph`` on the current GPU (the launch's). Milliseconds per call: the
    ``quantiles`` of ``replays`` replays of a graph holding about ``rep_ms`` of calls."""
    device = torch.device("cuda", torch.cuda.current_device())
    kernel_call()  # compiles the variant outside the capture
    torch.cuda.synchronize(device)
    one = torch.cuda.CUDAGraph()
    with capture_graph(one, device):
        kernel_call()
    repeats = max(1, int(rep_ms / max(_replay_ms(one), 1e-3)))
    many = torch.cuda.CUDAGraph()
    with capture_graph(many, device):
        for _ in range(repeats):
            kernel_call()
    times = torch.tensor([_replay_ms(many) / repeats for _ in range(replays)])
    if quantiles is None:
        return times.mean().item()
    picked = torch.quantile(times, torch.tensor(quantiles, dtype=times.dtype)).tolist()
    return picked[0] if len(picked) == 1 else picked


def _replay_ms(graph: torch.cuda.CUDAGraph) -> float:
    """Milliseconds of one replay of ``graph`` on the current stream, by CUDA events."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


#: (autotuner, its tuning key) -> (the config it chose, its launch keywords); see
#: ``launch_triton``
_CHOSEN_CONFIGS: dict[tuple, object] = {}


def launch_triton(autotuner, grid, args: tuple, constexprs: dict, tile: dict | None = None):
    """Launch the kernel of a Triton ``autotuner`` (``triton.autotune(...)(kernel)``),
    holding ``TRITON_LAUNCH_LOCK``.

    ``tile`` (tests, the interpreter, microbenchmarks): those meta-parameters (e.g.
    ``{"BLOCK_M": 4, "num_warps": 2}``) on the kernel itself, no tuning, no pre-hook.
    Otherwise the autotuner tunes on the first launch of each tuning key and launches its
    pick; later launches of that key run the pick straight on the kernel, pre-hook
    included. Triton's ``Autotuner.run`` rebuilds dictionaries of all arguments and
    formats every tensor's dtype on each launch: host time paid twice per quantized linear,
    in a step that is bound by the host without CUDA graphs (docs/KERNELS.md). The key is
    the autotuner's own (the
    values of its ``key`` arguments and every tensor argument's dtype), so a pick is
    reused exactly where the autotuner would reuse it."""
    kernel = autotuner.fn
    with TRITON_LAUNCH_LOCK:
        if tile is not None:
            kernel[grid](*args, **constexprs, **tile)
            return
        positions, names = _key_layout(autotuner, len(args))
        key = (id(autotuner), *[args[i] for i in positions], *[constexprs.get(k) for k in names],
               *[a.dtype for a in args if isinstance(a, torch.Tensor)])
        chosen = _CHOSEN_CONFIGS.get(key)
        if chosen is None:
            autotuner[grid](*args, **constexprs)
            config = autotuner.best_config
            _CHOSEN_CONFIGS[key] = (config, config.all_kwargs())
            return
        config, meta = chosen
        if config.pre_hook is not None:
            config.pre_hook({**dict(zip(autotuner.arg_names, args)), **constexprs, **meta})
        kernel[grid](*args, **constexprs, **meta)


@functools.cache
def _key_layout(autotuner, positional: int) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """Where an autotuner's key arguments sit in a launch: indices among the ``positional``
    arguments, and the names of those passed by keyword (the constexprs)."""
    index = {name: i for i, name in enumerate(autotuner.arg_names)}
    keys = [name for name in autotuner.keys if name in index]
    return (tuple(index[k] for k in keys if index[k] < positional),
            tuple(k for k in keys if index[k] >= positional))


#: activations a layer may apply to its served output ("" = none): a backend lists those
#: it applies in its GEMM epilogue (``fused_activations``). GELU (tanh) is the
#: feed-forward activation of PixArt and Latte; fused, the [M, 4K] bf16 output is written
#: once instead of written, read by Inductor's GELU kernel and written again.
OUTPUT_ACTIVATIONS = ("", "gelu_tanh")


def check_output_activation(name: str) -> None:
    if name not in OUTPUT_ACTIVATIONS:
        raise ValueError(f"epilogue activation must be one of {OUTPUT_ACTIVATIONS}, got {name!r}")


def apply_output_activation(out: torch.Tensor, name: str) -> torch.Tensor:
    """``name`` applied to a served output: what a GEMM epilogue computes, done in torch
    (the oracle, the ops' reference paths, QuantLinear around a backend that cannot)."""
    check_output_activation(name)
    return torch.nn.functional.gelu(out, approximate="tanh") if name == "gelu_tanh" else out


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1): the autotuners key on this bucket of
    M rather than the exact row count, which varies with the request."""
    return 1 << max(0, (n - 1).bit_length())


def restore_cfg_delta(
    out: torch.Tensor, half: int, bias: torch.Tensor | None
) -> torch.Tensor:
    """CFG-delta outputs ``[y_u; W d + b]`` -> the served ``[y_u; y_u + W d]``. Out of
    place on purpose: Inductor fuses it into the epilogue before it, where an in-place
    slice addition is a separate, much slower pass (docs/journal/kernels-2026-11.md)."""
    y_d = out[half:] - bias.to(out.dtype) if bias is not None else out[half:]
    return torch.cat((out[:half], out[:half] + y_d))


class BackendUnavailableError(RuntimeError):
    """A named backend cannot run here; the message says what is missing."""


@dataclass(frozen=True)
class ActQuant:
    """How one call quantizes its activations.

    Built by QuantLinear for every forward from the current timestep group and CFG
    layout. Tensors here are small (``[K]`` or ``[M]``) and live on x's device.
    """

    bits: int = 8
    #: block size of the block-diagonal Hadamard on K, or None for no rotation
    rotation_block: int | None = None
    #: per-input-channel divisor ``[K]`` (SmoothQuant), or None
    smooth_divisor: torch.Tensor | None = None
    #: static mode: one scale per row ``[M]`` (float32); None means dynamic per-token
    row_scale: torch.Tensor | None = None
    #: dynamic mode: fraction of the per-token absmax mapped to qmax; one value, or one
    #: per row ``[M]`` (each CFG half its own, in one launch, read on the device)
    clip_ratio: float | torch.Tensor = 1.0
    #: e4m3 activations (fp8 preset) instead of symmetric integers
    fp8: bool = False
    #: centring fused into the kernels: ``[N]`` row sums of the effective weight (the
    #: backend centres each activation row and adds ``row mean x weight_sum``), or None
    weight_sum: torch.Tensor | None = None
    #: CFG-delta fused into the kernels: the rows are [uncond; cond] halves of this many
    #: rows, and the backend quantizes each cond row as its difference from the paired
    #: uncond row (saves a pass over [M, K]); 0 = off
    cfg_delta_half: int = 0

    @property
    def static(self) -> bool:
        return self.row_scale is not None

    def row_clip(self, rows: int, device: torch.device) -> torch.Tensor:
        """The clip ratio as a float32 ``[M]`` tensor (what the kernels' ops take)."""
        clip = self.clip_ratio
        if isinstance(clip, torch.Tensor):
            return clip.to(device, torch.float32).reshape(-1).expand(rows).contiguous()
        return torch.full((rows,), float(clip), device=device, dtype=torch.float32)


class KernelBackend(abc.ABC):
    """A quantized-linear implementation registered under ``name``.

    Subclasses set ``name``; ``device_types`` and ``priority`` drive ``backend="auto"``
    (highest priority among the available backends that support the config wins).
    """

    name: str = ""
    #: device types ("cpu", "cuda") this backend can run on
    device_types: tuple[str, ...] = ()
    #: auto-selection priority; the reference backend is 0 (last resort)
    priority: int = 0
    #: whether ``linear`` takes ``act.weight_sum`` (centring inside the kernels)
    fuses_centering: bool = False
    #: whether ``linear`` takes ``act.cfg_delta_half`` (the CFG-delta subtraction inside
    #: the kernels)
    fuses_cfg_delta: bool = False
    #: with ``fuses_cfg_delta``: whether ``linear`` also adds the uncond output back (returns
    #: the served cond rows ``y_u + W d`` rather than ``W d + b``)
    restores_cfg_delta: bool = False
    #: output activations ``linear`` applies in its epilogue when given
    #: ``activation=<name>`` (the served output, after any CFG restore); ``QuantLinear``
    #: applies the others itself
    fused_activations: tuple[str, ...] = ()

    @abc.abstractmethod
    def is_available(self, device: torch.device | str) -> tuple[bool, str]:
        """Whether this backend runs on ``device``; the reason says what is missing."""

    def supports(self, config: QuantConfig) -> tuple[bool, str]:
        """Whether this backend implements ``config`` (bits, formats, modes)."""
        return True, ""

    @abc.abstractmethod
    def pack(
        self, qweight: torch.Tensor, weight_scale: torch.Tensor, bits: int
    ) -> dict[str, torch.Tensor]:
        """Turn quantized weights into backend storage; the values become buffers."""

    @abc.abstractmethod
    def unpack(self, packed: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Inverse of ``pack``: ``(qweight [N, K] int8 or e4m3, weight_scale [N] fp32)``."""

    @abc.abstractmethod
    def linear(
        self,
        x: torch.Tensor,
        packed: dict[str, torch.Tensor],
        act: ActQuant,
        bias: torch.Tensor | None,
    ) -> torch.Tensor:
        """``[M, K]`` activations -> ``[M, N]`` outputs in x's dtype."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name!r}>"

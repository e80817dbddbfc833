"""How the GPU kernels are launched and captured: the runtime under every Triton backend.

The contract a backend implements (``ActQuant``, ``KernelBackend``) is ``trdq.kernels.base``;
this module is what their GPU kernels share at launch time:

- ``launch_triton``: an autotuned Triton kernel launched with its remembered pick, under
  ``TRITON_LAUNCH_LOCK`` (autotuners keep per-call state; graph captures are one at a time);
- ``autotune_gpu_time``: the autotuners' timer (GPU time of CUDA-graph replays);
- ``capture_graph``: a CUDA graph capture on a per-device side stream;
- ``recording_launches`` / ``launches_recorded``: whether the current launches are recorded
  into a graph (a kernel may then pick a variant with more host cost per launch);
- ``next_pow2``: the bucket of M the autotuners key on.

Importing it never needs Triton or a GPU.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import threading
import warnings
from typing import Any

import torch

logger = logging.getLogger(__name__)

__all__ = [
    "TRITON_LAUNCH_LOCK",
    "autotune_gpu_time",
    "capture_graph",
    "launch_triton",
    "launches_recorded",
    "next_pow2",
    "recording_launches",
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
    it): this thread's current device and stream are restored, and the CUDA generators
    told the capture is over (``_end_generator_capture``), so the caller can go on
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
            _give_back(prior_device, prior_stream)
            _end_generator_capture(stream, prior_device, prior_stream)
            raise


def _give_back(device: int, stream) -> None:
    """This thread's current device and stream as they were before a capture."""
    torch.cuda.set_stream(stream)
    torch.cuda.set_device(device)


def _end_generator_capture(stream, prior_device, prior_stream) -> None:
    """After a failed capture: one empty capture that succeeds.

    Why: ``CUDAGraph.capture_end`` raises on a failed capture before it ends the CUDA
    generators' capture, so the default generator stays in capture mode and every later
    eager random draw from it fails ("Offset increment outside graph capture encountered
    unexpectedly": seen on an H100, in the tests after a capture that had failed). A
    capture that succeeds ends it. If even that fails, the error is logged: the caller's
    own error is the one to raise."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "the CUDA graph is empty"
            with torch.cuda.graph(torch.cuda.CUDAGraph(), stream=stream,
                                  capture_error_mode="thread_local"):
                pass
    except Exception:
        _give_back(prior_device, prior_stream)
        logger.warning("could not end the CUDA generators' capture after a failed one",
                       exc_info=True)


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
_CHOSEN_CONFIGS: dict[tuple, tuple[Any, dict[str, Any]]] = {}


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


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1): the autotuners key on this bucket of
    M rather than the exact row count, which varies with the request."""
    return 1 << max(0, (n - 1).bit_length())

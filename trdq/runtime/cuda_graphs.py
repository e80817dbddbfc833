"""Replaying the denoiser's forward (and the text encoders') from CUDA graphs: ``trdq
bench``'s ``+cg`` and ``+t5cg`` rows and the server's ``TRDQ_CUDA_GRAPHS``. The capture
itself (on a stream of the inputs' GPU, one at a time in the process) is
``trdq.kernels.launch.capture_graph``.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from trdq.kernels.launch import capture_graph, recording_launches
from trdq.runtime.compile import TEXT_ENCODERS

logger = logging.getLogger(__name__)

__all__ = [
    "CudaGraphForward",
    "TextEncoderGraphForward",
    "graph_text_encoders",
    "quant_context",
    "ungraph_text_encoders",
    "with_padded_mask",
]

#: argument values that take part in a graph's key as themselves; any other non-tensor
#: argument takes part by its type
_KEYED_CONSTANTS = (type(None), bool, int, float, str)


class CudaGraphForward:
    """Replays the denoiser's forward from CUDA graphs, one per (timestep group, shapes).

    The CPU cost of launching ~300 small kernels per step (Python custom ops, Triton
    launchers) otherwise exceeds their GPU time. Forward pre-hooks (the TR-DQ timestep
    hook) still run eagerly before each call, so the key sees the current group; the
    first call per key runs eagerly (compiles, autotunes), the second captures, later
    ones copy inputs into the static buffers and replay. Outputs are cloned.

    The server uses it too (``TRDQ_CUDA_GRAPHS``), where request shapes vary: at most
    ``max_graphs`` keys are captured (each holds its static inputs and outputs), later
    keys run eagerly, and with ``eager_on_failure`` a key whose capture fails runs
    eagerly from then on. The bench leaves both off: a ``+cg`` row must time graphs or
    fail, never time eager calls under its name.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        context=None,
        max_graphs: int | None = None,
        eager_on_failure: bool = False,
    ):
        self.module, self.context = module, context
        self.forward = module.forward
        self.max_graphs, self.eager_on_failure = max_graphs, eager_on_failure
        self.graphs: dict[Any, tuple] = {}
        self.seen: set[Any] = set()
        self.eager: set[Any] = set()  # keys past max_graphs, or whose capture failed
        self.pool = torch.cuda.graph_pool_handle()
        module.forward = self  # instance attribute: hooks in __call__ still run

    def _key(self, flat: list[torch.Tensor], spec) -> tuple:
        """The timestep group and CFG state, the tensors' shapes and dtypes, and the call's
        structure with its constant arguments (``output_hidden_states=True`` is another
        graph than ``False``)."""
        group = getattr(self.context, "group", None) if self.context is not None else None
        cfg = getattr(self.context, "cfg_active", None) if self.context is not None else None
        return (group, cfg, tuple((t.shape, t.dtype) for t in flat), _hashable(spec))

    @staticmethod
    def _flatten(obj, out: list[torch.Tensor]):
        if torch.is_tensor(obj):
            out.append(obj)
            return ("T", len(out) - 1)
        if isinstance(obj, dict):
            return ("D", {k: CudaGraphForward._flatten(v, out) for k, v in obj.items()})
        if isinstance(obj, (list, tuple)):
            return ("L", [CudaGraphForward._flatten(v, out) for v in obj])
        return ("C", obj)

    @staticmethod
    def _unflatten(spec, tensors):
        kind, val = spec
        if kind == "T":
            return tensors[val]
        if kind == "D":
            return {k: CudaGraphForward._unflatten(v, tensors) for k, v in val.items()}
        if kind == "L":
            return [CudaGraphForward._unflatten(v, tensors) for v in val]
        return val

    def _rehearse(self, args: tuple, kwargs: dict[str, Any]) -> None:
        """Calls to make before a key's first eager call, so that the capture finds what it
        will run compiled already (none here; ``TextEncoderGraphForward`` has one)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        flat: list[torch.Tensor] = []
        spec = self._flatten((list(args), kwargs), flat)
        key = self._key(flat, spec)
        if key not in self.graphs:
            if key in self.eager:
                return self.forward(*args, **kwargs)
            if key not in self.seen:
                self.seen.add(key)
                with recording_launches():  # tunes what the capture will launch
                    self._rehearse(args, kwargs)
                    return self.forward(*args, **kwargs)
            if self.max_graphs is not None and len(self.graphs) >= self.max_graphs:
                logger.warning("CUDA graphs: %d captured, the limit; new shapes run eagerly",
                               len(self.graphs))
                self.eager.add(key)
                return self.forward(*args, **kwargs)
            static = [t.clone() for t in flat]
            a, kw = self._unflatten(spec, static)
            device = next((t.device for t in flat if t.is_cuda),
                          torch.device("cuda", torch.cuda.current_device()))
            torch.cuda.synchronize(device)
            graph = torch.cuda.CUDAGraph()
            try:
                # on a stream of the inputs' GPU, one capture at a time in the process, and
                # other threads (the other GPUs' engine workers) free to call CUDA meanwhile
                # a compile inside the capture always fails it (Inductor reads values back
                # to the host): compiled code whose guards fail there runs eagerly instead,
                # captured like any other kernels
                with (torch.compiler.set_stance("eager_on_recompile"), recording_launches(),
                      capture_graph(graph, device, pool=self.pool)):
                    out = self.forward(*a, **kw)
            except Exception:
                if not self.eager_on_failure:
                    raise
                logger.warning("CUDA graph capture failed; these shapes run eagerly",
                               exc_info=True)
                self.eager.add(key)
                return self.forward(*args, **kwargs)
            self.graphs[key] = (graph, static, out)
        graph, static, out = self.graphs[key]
        for dst, src in zip(static, flat):
            dst.copy_(src)
        graph.replay()
        return _clone_output(out)


def _hashable(spec):
    """``_flatten``'s structure as a key: tensors by position, constants by value, other
    objects by type."""
    kind, val = spec
    if kind == "T":
        return spec
    if kind == "D":
        return ("D", tuple((k, _hashable(v)) for k, v in val.items()))
    if kind == "L":
        return ("L", tuple(_hashable(v) for v in val))
    return ("C", val if isinstance(val, _KEYED_CONSTANTS) else type(val).__qualname__)


def _clone_output(out):
    """A copy of a replayed output (the static buffers are overwritten by the next replay):
    tensors cloned inside tuples, lists and dicts, ``ModelOutput`` classes kept."""
    if torch.is_tensor(out):
        return out.clone()
    if isinstance(out, dict):  # transformers' / diffusers' ModelOutput is an OrderedDict
        return type(out)(**{k: _clone_output(v) for k, v in out.items()})
    if isinstance(out, (list, tuple)):
        return type(out)(_clone_output(o) for o in out)
    return out


class TextEncoderGraphForward(CudaGraphForward):
    """``CudaGraphForward`` for a transformers text encoder, which rehearses the capture's
    attention-mask path before the first call of each shape.

    Why: transformers' mask helpers hand the layers no mask when the padding mask is all
    ones (or absent) in an eager call, but always a mask tensor while a stream captures
    (their ``is_tracing`` is true then, and they skip the data-dependent test). The compiled
    layers would meet that tensor for the first time inside the capture (FLUX's CLIP prompt,
    a T5 prompt without padding; H100). One extra encode with a padded mask, its result
    dropped, compiles the mask-tensor path first; should its guards still differ, the
    capture runs those layers eagerly (``CudaGraphForward``) rather than fail.
    """

    def _rehearse(self, args: tuple, kwargs: dict[str, Any]) -> None:
        rehearsal = with_padded_mask(args, kwargs)
        if rehearsal is not None:
            self.forward(*rehearsal[0], **rehearsal[1])


def with_padded_mask(args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]] | None:
    """A text encoder's call arguments with its attention mask (keyword, second positional
    argument, or none given: all ones) padded at the last token, so that an eager call
    builds a mask tensor; None when the call has no 2-D ``input_ids`` to shape one."""
    ids = kwargs.get("input_ids", args[0] if args else None)
    if not torch.is_tensor(ids) or ids.ndim != 2 or ids.shape[1] < 2:
        return None
    mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
    padded = torch.ones_like(ids) if mask is None else mask.clone()
    padded[:, -1] = 0
    if len(args) > 1:
        return (args[0], padded, *args[2:]), kwargs
    return args, {**kwargs, "attention_mask": padded}


def graph_text_encoders(pipe, max_graphs: int | None = None,
                        eager_on_failure: bool = False) -> int:
    """Replay each CUDA text encoder's forward from CUDA graphs (``TextEncoderGraphForward``).

    Why: compiled, an encode still launches hundreds of small kernels from the host
    (PixArt-1024's T5-XXL on an H100: 12.5 ms wall for 5.0 ms of kernels, ``--profile``
    in docs/BENCHMARKS.md). The pipelines pad prompts to a fixed length, so each encoder
    sees one shape per batch size. Encoders already replayed (shared by several served
    variants) are left as they are. Returns the number of encoders wrapped.
    """
    wrapped = 0
    for attr in TEXT_ENCODERS:
        encoder = getattr(pipe, attr, None)
        if encoder is None or isinstance(encoder.__dict__.get("forward"), CudaGraphForward):
            continue
        if next(encoder.parameters()).is_cuda:
            TextEncoderGraphForward(encoder, max_graphs=max_graphs,
                                    eager_on_failure=eager_on_failure)
            wrapped += 1
    return wrapped


def ungraph_text_encoders(pipe) -> None:
    """Undo ``graph_text_encoders`` (the bench's next row starts from eager calls)."""
    for attr in TEXT_ENCODERS:
        encoder = getattr(pipe, attr, None)
        if encoder is not None and isinstance(encoder.__dict__.get("forward"), CudaGraphForward):
            del encoder.forward


def quant_context(transformer: torch.nn.Module):
    """The TR-DQ context of a quantized denoiser (its timestep group, CFG state), which
    ``CudaGraphForward`` keys its graphs on; None for an unquantized one."""
    state = getattr(transformer, "_trdq_state", None)
    return state.context if state is not None else None

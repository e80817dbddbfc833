"""How the kernels become torch operators (``torch.ops.trdq.*``).

``define_op`` registers a Python function as the CPU and CUDA kernel of a new operator,
with its schema inferred from the type hints and a fake (meta) implementation for
tracing, so ``torch.compile`` sees one opaque node and no graph break, as with
``torch.library.custom_op``.

Why not ``torch.library.custom_op``: every call of such an op goes through Python
wrappers (an autograd function even under ``no_grad``, Dynamo disabled and re-enabled,
an output-aliasing check), several times the host cost of an op registered through
``Library.impl``, most under ``no_grad`` (how diffusers pipelines run;
``docs/journal/numbers-from-comments.md``). A W8A8 PixArt step calls these ops ~200 times, and without CUDA
graphs a quantized step is bound by the host launching its kernels.

What the wrappers did and these ops do not: autograd (our ops are inference-only; the
weights are buffers) and the aliasing check (each op returns new tensors; keep it so).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["define_op", "linear_fake"]

#: one library fragment per namespace, kept alive for the process (a garbage-collected
#: Library deregisters its operators)
_LIBRARIES: dict[str, torch.library.Library] = {}

#: the dispatch keys our kernels serve; other devices get a "no kernel" error
DEVICE_KEYS = ("CPU", "CUDA")


def linear_fake(x, weight, *args, **kwargs):
    """The fake of every linear operator (``x [M, K]``, ``weight [N, ...]``, ...):
    ``[M, N]`` in x's dtype."""
    return x.new_empty((x.shape[0], weight.shape[0]))


def define_op(qualname: str, fn: Callable, fake: Callable):
    """Define ``qualname`` ("namespace::name") from ``fn``'s annotated signature, with
    ``fn`` as its CPU and CUDA kernel and ``fake`` for meta/fake tensors; returns the
    operator (``torch.ops.namespace.name``), callable like ``fn``."""
    namespace, name = qualname.split("::")
    lib = _LIBRARIES.get(namespace)
    if lib is None:
        lib = _LIBRARIES[namespace] = torch.library.Library(namespace, "FRAGMENT")
    lib.define(name + torch.library.infer_schema(fn, mutates_args=()))
    for key in DEVICE_KEYS:
        lib.impl(name, fn, key)
    torch.library.register_fake(qualname, fake, lib=lib)
    return getattr(getattr(torch.ops, namespace), name)

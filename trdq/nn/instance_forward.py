"""Giving one module instance another ``forward``, and taking it back.

The fused blocks and MLPs (``trdq.nn.fused_block``, ``trdq.nn.fused_mlp``) replace the
``forward`` of the diffusers modules they accept on the instance, so module names,
parameters and state dicts stay as they were, and mark the instance so the change can be
found and undone.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

from torch import nn

__all__ = ["restore_forwards", "set_forward"]


def set_forward(module: nn.Module, forward: Callable[..., Any], marker: str) -> None:
    """``forward`` (a function taking the module first) becomes ``module``'s forward;
    ``marker`` is set True on the instance."""
    module.forward = types.MethodType(forward, module)
    setattr(module, marker, True)


def restore_forwards(root: nn.Module, marker: str, *attributes: str) -> int:
    """Give every module under ``root`` marked ``marker`` its class's forward again and
    delete the marker and ``attributes``; returns how many."""
    count = 0
    for module in root.modules():
        if getattr(module, marker, False):
            del module.forward
            for name in (marker, *attributes):
                delattr(module, name)
            count += 1
    return count

"""Orthogonal rotations on the input-channel axis (K).

The default rotation is block-diagonal normalized Hadamard, ``R = blockdiag(H_b/sqrt(b))``
with ``b = min(max_block, largest power of two dividing K)`` (1152 = 9 x 128). R is
symmetric and orthogonal, so ``x W^T = (x R)(W R)^T``: weights are rotated once offline,
activations online. An outlier channel is spread evenly over its block, which shrinks the
per-token absmax and therefore the int8 step size.

``fwht`` is the fast Walsh-Hadamard transform in pure torch (O(K log b)), the reference for
the fused CUDA kernels; ``block_hadamard_matrix`` is the explicit matrix used in tests.

For the ``faithful`` preset we also build DuQuant-style rotations ``R0 * P * R1`` (block
rotation, zig-zag channel permutation across blocks, block rotation): ``DuQuantRotation``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

__all__ = [
    "DuQuantRotation",
    "block_hadamard_matrix",
    "fwht",
    "hadamard_block_size",
    "hadamard_matrix",
    "hadamard_transform",
    "hadamard_transform_factored",
    "rotate_weight",
    "zigzag_permutation",
]


def hadamard_matrix(n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Unnormalized Sylvester Hadamard matrix of order ``n`` (a power of two)."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"Hadamard order must be a power of two, got {n}")
    h = torch.ones(1, 1, dtype=dtype)
    while h.shape[0] < n:
        h = torch.cat((torch.cat((h, h), 1), torch.cat((h, -h), 1)), 0)
    return h


def hadamard_block_size(k: int, max_block: int = 128) -> int:
    """Largest power of two dividing ``k``, capped at ``max_block`` (itself a power of 2)."""
    if k < 1:
        raise ValueError(f"width must be positive, got {k}")
    return min(max_block, k & -k)


def block_hadamard_matrix(k: int, block: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Dense ``[k, k]`` ``blockdiag(H_b / sqrt(b))``."""
    if k % block:
        raise ValueError(f"block {block} does not divide width {k}")
    h = hadamard_matrix(block, dtype) / math.sqrt(block)
    return torch.block_diag(*([h] * (k // block)))


def fwht(x: torch.Tensor, block: int) -> torch.Tensor:
    """Normalized in-block fast Walsh-Hadamard transform on the last axis.

    Equals ``x @ block_hadamard_matrix(K, block)``. Computes in float32 and returns
    x's dtype. Butterfly: at stride h, pairs (a, b) become (a + b, a - b).
    """
    if block & (block - 1):
        raise ValueError(f"block must be a power of two, got {block}")
    k = x.shape[-1]
    if k % block:
        raise ValueError(f"block {block} does not divide width {k}")
    out_dtype = x.dtype
    y = x.float().reshape(-1, k // block, block)
    h = 1
    while h < block:
        y = y.view(y.shape[0], y.shape[1], block // (2 * h), 2, h)
        a, b = y[..., 0, :], y[..., 1, :]
        y = torch.stack((a + b, a - b), dim=3)
        h *= 2
    y = y.reshape(x.shape) / math.sqrt(block)
    return y.to(out_dtype)


@functools.lru_cache(maxsize=32)
def _normalized_hadamard(block: int, device: str, dtype: torch.dtype) -> torch.Tensor:
    return (hadamard_matrix(block, torch.float64) / math.sqrt(block)).to(device=device, dtype=dtype)


def hadamard_transform(x: torch.Tensor, block: int) -> torch.Tensor:
    """Same result as ``fwht`` via one batched ``[*, b] @ H_b`` GEMM (float32).

    For b <= 128 a small dense GEMM beats the log2(b) butterfly passes in eager PyTorch
    on CPU (BLAS vs. many elementwise kernels); ``fwht`` stays the structural reference.
    """
    k = x.shape[-1]
    if k % block:
        raise ValueError(f"block {block} does not divide width {k}")
    h = _normalized_hadamard(block, str(x.device), torch.float32)
    y = x.float().reshape(-1, block) @ h
    return y.reshape(x.shape).to(x.dtype)


def hadamard_transform_factored(x: torch.Tensor, block: int) -> torch.Tensor:
    """Same result as ``hadamard_transform`` (up to float rounding) for torch.compile.

    A Sylvester ``H_b`` is ``H_p (x) H_q`` with ``b = p q``, so a block viewed as a
    ``[p, q]`` matrix ``X`` rotates as ``H_p X H_q``: p + q multiply-adds per value
    instead of b. Written as broadcast products summed over one axis, Inductor turns it
    into two fused reduction loops, faster on a CPU than the compiled dense GEMM; eagerly
    the dense GEMM is faster, so eager code keeps ``hadamard_transform``.
    """
    k = x.shape[-1]
    if k % block:
        raise ValueError(f"block {block} does not divide width {k}")
    p = 1 << ((block.bit_length() - 1) // 2)  # b = 2^k -> p = 2^(k // 2)
    q = block // p
    h_p = _normalized_hadamard(p, str(x.device), torch.float32)
    h_q = _normalized_hadamard(q, str(x.device), torch.float32)
    y = x.float().reshape(-1, p, 1, q)
    # Sylvester matrices are symmetric: X H_q, then H_p (X H_q), each as a summed product
    y = (y * h_q.reshape(1, 1, q, q)).sum(-1)  # [n, p, q]
    y = (y.unsqueeze(1) * h_p.reshape(1, p, p, 1)).sum(2)
    return y.reshape(x.shape).to(x.dtype)


def rotate_weight(weight: torch.Tensor, block: int) -> torch.Tensor:
    """``W R`` for ``[N, K]`` weights: the same transform on the input-channel axis."""
    return hadamard_transform(weight, block)


def zigzag_permutation(channel_absmax: torch.Tensor, block: int) -> torch.Tensor:
    """DuQuant's zig-zag: deal channels sorted by absmax over blocks 0..n-1, n-1..0, ...

    so every block gets a mix of outlier and ordinary channels. Returns ``perm`` such that
    ``x[..., perm]`` is the permuted activation.
    """
    k = channel_absmax.numel()
    n_blocks = k // block
    order = torch.argsort(channel_absmax.float(), descending=True)
    slots: list[list[int]] = [[] for _ in range(n_blocks)]
    for i, ch in enumerate(order.tolist()):
        rnd, pos = divmod(i, n_blocks)
        blk = pos if rnd % 2 == 0 else n_blocks - 1 - pos
        slots[blk].append(ch)
    return torch.tensor([c for s in slots for c in s], dtype=torch.long)


@dataclass
class DuQuantRotation:
    """``T(Z) = blockmul(blockmul(Z, R0)[..., perm], R1)`` (TRDQ-RELEASED.md 14.2).

    R0, R1 are ``[block, block]`` orthogonal (shared by every block); ``perm`` is ``[K]``.
    Deviation from the released code (documented): R0/R1 are normalized Hadamard matrices
    with a random sign flip per column instead of a greedy Givens/Householder search; the
    zig-zag permutation is fitted on calibration absmax exactly as released.
    """

    r0: torch.Tensor
    perm: torch.Tensor
    r1: torch.Tensor

    @property
    def block(self) -> int:
        return self.r0.shape[0]

    @classmethod
    def fit(
        cls, channel_absmax: torch.Tensor, block: int, generator: torch.Generator | None = None
    ) -> DuQuantRotation:
        h = hadamard_matrix(block) / math.sqrt(block)
        signs0 = torch.randint(0, 2, (block,), generator=generator).float() * 2 - 1
        signs1 = torch.randint(0, 2, (block,), generator=generator).float() * 2 - 1
        r0 = h * signs0[None, :]
        # absmax after the first rotation decides the permutation
        k = channel_absmax.numel()
        rotated_absmax = (channel_absmax.float().view(-1, block).abs() @ r0.abs()).view(k)
        perm = zigzag_permutation(rotated_absmax, block)
        return cls(r0=r0, perm=perm, r1=h * signs1[None, :])

    def apply(self, z: torch.Tensor) -> torch.Tensor:
        k = z.shape[-1]
        b = self.block
        zf = z.float()
        y = (zf.reshape(-1, b) @ self.r0.to(z.device)).reshape(zf.shape)
        y = y[..., self.perm.to(z.device)]
        y = (y.reshape(-1, b) @ self.r1.to(z.device)).reshape(zf.shape)
        assert y.shape[-1] == k
        return y

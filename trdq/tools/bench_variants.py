"""How ``trdq bench`` builds the denoiser of each row: peers, fused projections, profiling.

Kept apart from the harness (``bench.py``) so each file holds one concept: here the model
transforms (fused q/k/v projections, torchao peers, the direct FP8 swap) and the
kernel-time profile of one step. What the server shares with the bench lives in
``trdq.runtime``: ``torch.compile`` (``+compile`` rows, TRDQ_COMPILE) is
``trdq.runtime.compile``, CUDA-graph replay (``+cg`` rows, TRDQ_CUDA_GRAPHS) is
``trdq.runtime.cuda_graphs``.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = [
    "apply_fp8_swap",
    "apply_torchao",
    "profile_step",
    "profile_text_encoder",
]


def _block_linear_filter(module: torch.nn.Module, fqn: str) -> bool:
    return (
        isinstance(module, torch.nn.Linear)
        and "transformer_blocks" in fqn
        and module.in_features >= 16
        and module.out_features >= 16
    )


def apply_torchao(transformer: torch.nn.Module, kind: str) -> None:
    """torchao peers on the same layers TR-DQ replaces (the DiT blocks' linears)."""
    from torchao.quantization import quantize_

    if kind == "fp8row":
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow

        cfg = Float8DynamicActivationFloat8WeightConfig(
            granularity=PerRow(), set_inductor_config=False
        )
    else:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig

        cfg = Int8DynamicActivationInt8WeightConfig(set_inductor_config=False)
    quantize_(transformer, cfg, filter_fn=_block_linear_filter)


def apply_fp8_swap(transformer: torch.nn.Module) -> int:
    """Swap every block ``nn.Linear`` for a module calling ``trdq::fp8_linear`` directly
    (rotation folded into e4m3 weights, dynamic per-token e4m3 activations, no calibration)."""
    from trdq import primitives as P
    from trdq.kernels import ops
    from trdq.rotation import fwht, hadamard_block_size

    class Fp8SwapLinear(torch.nn.Module):
        def __init__(self, linear: torch.nn.Linear):
            super().__init__()
            self.in_features, self.out_features = linear.in_features, linear.out_features
            self.block = hadamard_block_size(linear.in_features)
            w = fwht(linear.weight.detach().float(), self.block)
            qw, ws = P.quantize_weight_per_channel(w, 8, fp8=True)
            self.register_buffer("weight", qw.contiguous())
            self.register_buffer("weight_scale", ws.contiguous())
            self.register_buffer("bias", None if linear.bias is None else linear.bias.detach())

        def forward(self, x):
            x2 = x.reshape(-1, self.in_features)
            out = ops.fp8_linear(
                x2,
                self.weight,
                self.weight_scale,
                self.bias,
                rotation_block=self.block,
                clip_ratio=x2.new_ones(x2.shape[0], dtype=torch.float32),  # clip 1 per row
            )
            return out.reshape(*x.shape[:-1], self.out_features)

    names = [
        n
        for n, m in transformer.named_modules()
        if _block_linear_filter(m, n) and m.in_features % 16 == 0 and m.out_features % 16 == 0
    ]
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = transformer.get_submodule(parent_name)
        setattr(parent, child, Fp8SwapLinear(getattr(parent, child)))
    return len(names)


#: inductor's generated pointwise / reduction / persistent-reduction kernels: named after
#: every op they fuse, so "triton_poi_fused__scaled_mm_..." is an activation quantizer that
#: feeds a GEMM, not one; they count as elementwise whatever they name
INDUCTOR_FUSED_PREFIXES = ("triton_poi_", "triton_red_", "triton_per_")
KERNEL_CATEGORIES = (
    ("rotate_quant", ("_rotate_quant",)),
    ("lowbit_gemm", ("_lowbit_gemm",)),
    ("attention", ("flash", "fmha", "attention", "attn")),
    ("gemm", ("gemm", "nvjet", "cutlass", "sm90_xmma", "scaled_mm", "f8f8bf16")),
)


def kernel_category(kernel_name: str) -> str:
    """The profile category of one GPU kernel, by its name."""
    name = kernel_name.lower()
    if name.startswith(INDUCTOR_FUSED_PREFIXES):
        return "elementwise/other"
    return next(
        (c for c, keys in KERNEL_CATEGORIES if any(k in name for k in keys)),
        "elementwise/other",
    )


def _kernel_us(event) -> float:
    """GPU microseconds of one profiler entry (``cuda_time_total`` on older torch)."""
    return getattr(event, "device_time_total", 0.0) or getattr(event, "cuda_time_total", 0.0)


#: kernels kept per profiled row, and characters of each name: Inductor names a kernel after
#: every op it fuses, and the ops near the end of a long name tell two kernels apart
TOP_KERNELS = 40
KERNEL_NAME_CHARS = 200


def profile_step(fn, steps: int = 3) -> dict[str, Any]:
    """GPU kernel time of one denoiser call by category (ms), from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
    by_cat: dict[str, float] = {}
    top: list[tuple[str, float, float]] = []
    for evt in prof.key_averages():
        us = _kernel_us(evt)
        if not us:
            continue
        cat = kernel_category(evt.key)
        by_cat[cat] = by_cat.get(cat, 0.0) + us / 1e3 / steps
        top.append((evt.key[:KERNEL_NAME_CHARS], us / 1e3 / steps, evt.count / steps))
    top.sort(key=lambda kv: -kv[1])
    return {
        "ms_per_step_by_category": by_cat,
        "total_ms": sum(by_cat.values()),
        # (kernel, ms per step, launches per step): one kernel's total may be one call per
        # block or one per layer; the launches tell which code it stands for
        "top_kernels_ms": top[:TOP_KERNELS],
    }


def profile_text_encoder(pipe, call, runs: int = 3) -> dict[str, float] | None:
    """Wall and GPU kernel ms of the pipeline's text encoder on the inputs one pipeline
    ``call`` gives it; ``None`` where the pipeline has no ``text_encoder``.

    Why: a quantized row's encode stage was seen 46 ms slower than bf16's with the same
    encoder and weights. Wall well above GPU time says the host is the bound (launches,
    Python per op); equal GPU time with a slower wall says something on the host changed.
    """
    import time

    from torch.profiler import ProfilerActivity, profile

    encoder = getattr(pipe, "text_encoder", None)
    if encoder is None:
        return None
    seen: list[tuple[tuple, dict]] = []

    def record(_module, args, kwargs):
        if not seen:
            seen.append((args, kwargs))

    handle = encoder.register_forward_pre_hook(record, with_kwargs=True)
    try:
        call()
    finally:
        handle.remove()
    if not seen:
        return None
    args, kwargs = seen[0]

    def encode():
        with torch.inference_mode():
            encoder(*args, **kwargs)

    on_gpu = next(encoder.parameters()).is_cuda

    def sync():
        if on_gpu:
            torch.cuda.synchronize()

    encode()
    sync()
    walls = []
    for _ in range(runs):
        began = time.perf_counter()
        encode()
        sync()
        walls.append((time.perf_counter() - began) * 1e3)
    gpu_ms = 0.0
    if on_gpu:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            encode()
            sync()
        gpu_ms = sum(_kernel_us(e) for e in prof.key_averages()) / 1e3
    return {"wall_ms": sorted(walls)[len(walls) // 2], "gpu_ms": gpu_ms}

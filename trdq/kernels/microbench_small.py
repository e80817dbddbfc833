"""Microbenchmarks of the small memory-bound kernels against what they replace
(``python -m trdq.kernels.microbench_small``): one GPU call of about a minute instead of
a pipeline bench, for kernels written without a GPU.

- ``int8_gemv`` (``trdq.kernels.triton_gemv``) at FLUX.1-dev's adaLN shapes, one and two
  rows: against dequantize + ``F.linear`` (eager ``WeightOnlyLinear``) and against the
  compiled reduction (``WeightOnlyLinear._reduced_forward`` under torch.compile).
- ``attention_inputs_e4m3`` (``trdq.kernels.triton_attention_quant``) on PixArt-1024's
  and Latte's fused projection outputs: against the torch ops Inductor fuses
  (``fa3_attention.quantize_attention_inputs``, compiled).
- ``fa3_cross_attention`` (``trdq.kernels.cross_attention``) at PixArt-1024's and Latte's
  cross-attention (120 text tokens, the CFG half's prompt padded): against SDPA with
  diffusers' additive key-padding bias, the call it replaces (both compiled, not from a
  CUDA graph: the kept-keys sort and gathers are launch-bound here, 0.30 ms against the
  41 us FA3's kernel takes in PixArt's graphs, H100; the bench profile is the measure).

Median ms per call (CUDA events via ``triton.testing.do_bench``), GB/s of the bytes each
must move, and the largest difference to the reference. Prints a table and writes JSON to
``--json`` after each shape (partial results survive a time limit).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import torch

from trdq.kernels.microbench import bench_ms, report

#: (name, rows, K, N) of the adaLN projections: FLUX.1-dev double / single blocks
GEMV_SHAPES = [
    ("flux.double.adaln", 1, 3072, 18432),
    ("flux.single.adaln", 1, 3072, 9216),
    ("cfg.pair.adaln", 2, 3072, 18432),
]
#: (name, batch, tokens, heads, head dim) of the self-attention inputs
ATTENTION_CAST_SHAPES = [
    ("pixart1024.attn1", 2, 4096, 16, 72),
    ("latte512.frames", 32, 1024, 16, 72),
]
#: (name, batch, query tokens, text tokens, heads, head dim, kept text tokens per sample
#: or None for no mask) of the cross-attention calls
CROSS_ATTENTION_SHAPES = [
    ("pixart1024.attn2", 2, 4096, 120, 16, 72, (2, 17)),
    ("latte512.attn2", 32, 1024, 120, 16, 72, None),
]


def gemv_rows(rows: int, k: int, n: int) -> dict[str, float]:
    from trdq.kernels.triton_gemv import int8_gemv_reference, int8_gemv_triton
    from trdq.nn.weight_only import WeightOnlyLinear

    layer = WeightOnlyLinear(torch.nn.Linear(k, n), 8).cuda()
    x = torch.randn(rows, k, device="cuda").bfloat16()
    assert layer.bias is not None  # nn.Linear's default
    bias = layer.bias.bfloat16()
    scale = layer.scale[:, 0]
    reduced = torch.compile(lambda t: layer._reduced_forward(t, bias))
    weight_bytes = n * k
    out = {
        "dequant_linear": bench_ms(lambda: torch.nn.functional.linear(
            x, layer.dequantized_weight(x.dtype), bias)),
        "compiled_reduction": bench_ms(lambda: reduced(x)),
        "int8_gemv": bench_ms(lambda: int8_gemv_triton(x, layer.qweight, scale, bias)),
    }
    out["int8_gemv_GBps"] = weight_bytes / out["int8_gemv"] / 1e6
    out["compiled_reduction_GBps"] = weight_bytes / out["compiled_reduction"] / 1e6
    ref = int8_gemv_reference(x, layer.qweight, scale, bias).float()
    out["max_abs_diff"] = (int8_gemv_triton(x, layer.qweight, scale, bias).float()
                           - ref).abs().max().item()
    return out


def attention_cast_rows(batch: int, tokens: int, heads: int, dim: int) -> dict[str, float]:
    from trdq.kernels import fa3_attention as fa3
    from trdq.kernels.triton_attention_quant import attention_inputs_e4m3_triton, padded_head_dim

    qkv = torch.randn(batch, tokens, 3 * heads * dim, device="cuda").bfloat16() * 3
    q, k, v = (t.view(batch, tokens, heads, dim) for t in qkv.chunk(3, dim=-1))
    stats = fa3.attention_input_stats(q, k, v)
    scales, means = fa3.stacked_scales_and_means(stats)
    torch_ops = torch.compile(lambda a, b, c: fa3.quantize_attention_inputs(a, b, c, stats)[0])
    moved = qkv.numel() * 2 + 3 * batch * tokens * heads * padded_head_dim(dim)
    out = {
        "inductor_casts": bench_ms(lambda: torch_ops(q, k, v)),
        "one_launch": bench_ms(lambda: attention_inputs_e4m3_triton(q, k, v, scales, means)),
    }
    out["one_launch_GBps"] = moved / out["one_launch"] / 1e6
    out["inductor_casts_GBps"] = moved / out["inductor_casts"] / 1e6
    ours = attention_inputs_e4m3_triton(q, k, v, scales, means)
    theirs = torch.stack(list(fa3.quantize_attention_inputs(q, k, v, stats)[0]))
    out["codes_diff_fraction"] = (ours.float() != theirs.float()).float().mean().item()
    return out


def cross_attention_rows(batch: int, tokens: int, keys: int, heads: int, dim: int,
                         kept: tuple[int, ...] | None) -> dict[str, float]:
    from trdq.kernels.cross_attention import fa3_cross_attention

    q = torch.randn(batch, tokens, heads, dim, device="cuda").bfloat16()
    k, v = (torch.randn(batch, keys, heads, dim, device="cuda").bfloat16() for _ in range(2))
    keep = None
    bias = None
    if kept is not None:
        counts = torch.tensor([kept[i % len(kept)] for i in range(batch)], device="cuda")
        keep = torch.arange(keys, device="cuda")[None, :] < counts[:, None]
        # diffusers' bias, as AttnProcessor2_0 hands it to SDPA: [B, heads, 1, S_k]
        bias = ((~keep).bfloat16() * -10000.0)[:, None, None, :].expand(batch, heads, 1, keys)

    def sdpa(a, b, c):
        return torch.nn.functional.scaled_dot_product_attention(
            a.transpose(1, 2), b.transpose(1, 2), c.transpose(1, 2), attn_mask=bias
        ).transpose(1, 2)

    sdpa_compiled = torch.compile(sdpa)
    fa3_compiled = torch.compile(lambda a, b, c: fa3_cross_attention(a, b, c, keep))
    moved = 2 * (2 * q.numel() + 2 * k.numel())
    out = {"sdpa_bias": bench_ms(lambda: sdpa_compiled(q, k, v)),
           "fa3_cross": bench_ms(lambda: fa3_compiled(q, k, v))}
    out["fa3_cross_GBps"] = moved / out["fa3_cross"] / 1e6
    out["sdpa_bias_GBps"] = moved / out["sdpa_bias"] / 1e6
    out["max_abs_diff"] = (fa3_compiled(q, k, v).float() - sdpa(q, k, v).float()).abs().max().item()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write all numbers here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("microbench_small needs CUDA", file=sys.stderr)
        return 2
    import triton

    result: dict[str, Any] = {"device": torch.cuda.get_device_name(),
                              "torch": torch.__version__, "triton": triton.__version__,
                              "what": __doc__.split("\n\n")[1], "int8_gemv": {},
                              "attention_casts": {}, "cross_attention": {}}

    def save() -> None:
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(result, fh, indent=1)

    for name, rows, k, n in GEMV_SHAPES:
        report(result["int8_gemv"], f"{name} M={rows} K={k} N={n}", gemv_rows(rows, k, n))
        save()
    for name, batch, tokens, heads, dim in ATTENTION_CAST_SHAPES:
        report(result["attention_casts"], f"{name} B={batch} S={tokens} H={heads} D={dim}",
                attention_cast_rows(batch, tokens, heads, dim))
        save()
    for name, batch, tokens, keys, heads, dim, kept in CROSS_ATTENTION_SHAPES:
        report(result["cross_attention"], f"{name} B={batch} S={tokens} S_k={keys} H={heads} "
               f"D={dim} kept={kept}", cross_attention_rows(batch, tokens, keys, heads, dim, kept))
        save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

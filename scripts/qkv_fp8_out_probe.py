"""GPU probe: can the fused Q/K/V projection write FA3's e4m3 operands from its GEMM epilogue?

Why: FP8 attention quantizes Q, K and V after the projection (``fa3_fp8_attention``): per
(batch, head) statistics over the tokens (K's and V's means, the absmaxes), then the
casts; Inductor fuses them into a few kernels, but each reads the projection's bf16 output
again. With *static* per-head scales and means (calibrated per timestep group, as the
linears' activation scales are) all of that folds into the projection itself: subtracting
any constant from K is exact under softmax and a constant taken from V comes back exactly
as ``P (V - m) + m``, so ``(x W^T + b - m) / s`` is a per-column scale and bias. If
``torch._scaled_mm`` writes e4m3 with row-wise scales, no pass is left at all.

This times, at the served shapes (GPU microseconds, ``triton.testing.do_bench``):
- ``bf16``: the row-wise e4m3 GEMM writing bf16 (what ships);
- ``e4m3``: the same GEMM with the per-head scales and means folded into its column
  scales and bias, writing e4m3 (or the error torch gives);
- ``bf16+cast``: ``bf16`` then one compiled pass to e4m3 with the static scales;
- ``bf16+dynamic``: ``bf16`` then the shipped dynamic quantization (compiled
  ``quantize_attention_inputs``), for the cost it would replace.
and how many e4m3 codes ``e4m3`` and ``bf16+cast`` give differently.

Run on the device: ``STAGES=qkvprobe bash scripts/gpu_attention.sh`` (its environment puts
the repository and the carried wheels on the path); results go to
``$OUT/qkv-fp8-out-probe.json``.
"""

from __future__ import annotations

import json
import os

import torch

from trdq.kernels.fa3_attention import quantize_attention_inputs

E4M3 = torch.float8_e4m3fn
#: name -> (rows, in features, heads, head dim): PixArt-1024 and Latte-512's spatial
#: attention with the CFG batch, head dim 72 padded to 80 for FA3
SHAPES = {"pixart-1024": (8192, 1152, 16, 72), "latte-512-spatial": (32768, 1152, 16, 72)}


def bench(fn) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=25, rep=100)) * 1e3


def probe(rows: int, features: int, heads: int, head_dim: int) -> dict[str, object]:
    dev = "cuda"
    padded = (head_dim + 15) // 16 * 16
    cols = 3 * heads * padded
    x8 = (torch.randn(rows, features, device=dev) * 0.5).to(E4M3)
    w8 = (torch.randn(cols, features, device=dev) * 0.5).to(E4M3)
    scale_a = torch.rand(rows, 1, device=dev) * 0.01 + 0.01
    scale_b = torch.rand(1, cols, device=dev) * 0.01 + 0.01
    bias = torch.randn(cols, device=dev, dtype=torch.bfloat16) * 0.1
    # static per-head scales and means, one value per output column (zero on padding)
    col_scale = torch.rand(cols, device=dev) * 0.02 + 0.01
    col_mean = torch.randn(cols, device=dev) * 0.05
    folded_b = (scale_b / col_scale).contiguous()
    folded_bias = ((bias.float() - col_mean) / col_scale).to(torch.bfloat16)
    out: dict[str, object] = {"rows": rows, "features": features, "cols": cols}

    def gemm_bf16():
        return torch._scaled_mm(x8, w8.t(), scale_a, scale_b, bias=bias, out_dtype=torch.bfloat16)

    out["bf16_us"] = bench(gemm_bf16)

    @torch.compile(fullgraph=True)
    def cast(y):
        v = (y.float() - col_mean) / col_scale
        return v.clamp(-448.0, 448.0).to(E4M3)

    out["bf16+cast_us"] = bench(lambda: cast(gemm_bf16()))
    reference = cast(gemm_bf16())

    def gemm_e4m3():
        return torch._scaled_mm(x8, w8.t(), scale_a, folded_b, bias=folded_bias, out_dtype=E4M3)

    try:
        codes = gemm_e4m3()
        out["e4m3_us"] = bench(gemm_e4m3)
        differ = (codes.float() != reference.float())
        out["e4m3_codes_differing"] = float(differ.float().mean())
        out["e4m3_max_code_step"] = float((codes.float() - reference.float()).abs().max())
    except (RuntimeError, ValueError, TypeError) as exc:  # the answer may be "not supported"
        out["e4m3_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    try:  # without bias (some epilogues take none with an e4m3 output)
        def gemm_e4m3_nobias():
            return torch._scaled_mm(x8, w8.t(), scale_a, folded_b, out_dtype=E4M3)
        gemm_e4m3_nobias()
        out["e4m3_nobias_us"] = bench(gemm_e4m3_nobias)
    except (RuntimeError, ValueError, TypeError) as exc:
        out["e4m3_nobias_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"

    unpadded = 3 * heads * head_dim
    w8u = w8[:unpadded]
    biasu = bias[:unpadded]
    batch = 2

    @torch.compile(fullgraph=True)
    def dynamic(y):
        q, k, v = y.reshape(batch, rows // batch, 3, heads, head_dim).unbind(2)
        return quantize_attention_inputs(q, k, v)

    def gemm_bf16_unpadded():
        return torch._scaled_mm(x8, w8u.t(), scale_a, scale_b[:, :unpadded], bias=biasu,
                                out_dtype=torch.bfloat16)

    out["bf16_unpadded_us"] = bench(gemm_bf16_unpadded)
    out["bf16+dynamic_us"] = bench(lambda: dynamic(gemm_bf16_unpadded()))
    return out


def main() -> None:
    results: dict[str, object] = {"device": torch.cuda.get_device_name(),
                                  "torch": torch.__version__}
    path = os.path.join(os.environ.get("OUT", "/tmp"), "qkv-fp8-out-probe.json")
    for name, shape in SHAPES.items():
        results[name] = probe(*shape)
        print(name, results[name], flush=True)
        with open(path, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()

"""GEMM and rotate+quantize microbenchmarks at DiT shapes (``python -m trdq.kernels.microbench``).

Times (median, CUDA events via ``triton.testing.do_bench``) for every linear shape of a
PixArt-alpha-1024 CFG step (M = 2 x 4096 tokens, K/N from hidden 1152 and MLP 4608), for:
bf16 ``F.linear``; FP8 ``_scaled_mm`` alone; the fused rotate+quantize kernel alone
(butterfly and tensor-core variants); the whole ``trdq::fp8_linear`` op; an unfused FP8
linear in plain torch ops (rotation matmul + absmax + cast + ``_scaled_mm``); the Triton
W4A8 and int8 GEMMs; ``torch._int_mm``. Also two ceilings: device copy bandwidth and
8192^3 bf16 / FP8 GEMM rates; and the self-attention shapes (bf16 SDPA against the 8-bit
attention kernel, with its error). Prints a table and writes JSON to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from typing import Any

import torch

logger = logging.getLogger(__name__)

#: (name, M, K, N) for one PixArt-alpha-1024 CFG step (batch 2 x 4096 tokens, 120 text tokens)
PIXART_SHAPES = [
    ("attn1.qkv(each)", 8192, 1152, 1152),
    ("attn2.kv(text)", 240, 1152, 1152),
    ("ff.up", 8192, 1152, 4608),
    ("ff.down", 8192, 4608, 1152),
    ("batch4.ff.up", 32768, 1152, 4608),
]


#: the description ``--rotate-quant-wide`` writes into its JSON (docs/BENCHMARKS.md lists it)
WIDE_ROTATE_QUANT_WHAT = (
    "the activation quantizer (dynamic int8, centring, smoothing, block-128 Hadamard) on "
    "the widest linears' inputs: the tiled kernel against the single-pass kernel (whole "
    "rows in registers), median ms per call, GB/s, the codes' and scales' largest difference")
#: (name, M, K) of the activations feeding the widest linears: where the single-pass
#: rotate+quantize kernel (whole rows in registers) may replace the tiled one
WIDE_ROTATE_QUANT_SHAPES = [
    ("pixart.ff.down", 8192, 4608),  # the single pass already serves it: the reference
    ("wan1.3b.ffn.down", 32760, 8960),
    ("sd35.ff.down", 8858, 9728),
    ("flux.ff.down", 4096, 12288),
    ("flux.single.proj_out", 4608, 15360),
]


def bench_ms(fn, warmup=25, rep=100) -> float:
    """Median ms; NaN (with the error logged) when a variant fails, so one broken
    variant does not hide the others' numbers."""
    import triton.testing

    try:
        return float(triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))
    except Exception as exc:  # noqa: BLE001 - report and continue with the next variant
        print(f"  variant failed: {type(exc).__name__}: {str(exc)[-300:]}", flush=True)
        return float("nan")


def ceilings() -> dict[str, float]:
    n = 1 << 28  # 512 MiB of bf16 copied
    src = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src))
    out = {"copy_TBps": 2 * n * 2 / ms / 1e9}
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms = bench_ms(lambda: a @ b)
    out["bf16_TFLOPs"] = 2 * 8192**3 / ms / 1e9
    a8, b8 = a.to(torch.float8_e4m3fn), b.to(torch.float8_e4m3fn)
    one = torch.ones(8192, 1, device="cuda")
    ms = bench_ms(
        lambda: torch._scaled_mm(a8, b8.t(), scale_a=one, scale_b=one.t(), out_dtype=torch.bfloat16)
    )
    out["fp8_rowwise_TFLOPs"] = 2 * 8192**3 / ms / 1e9
    return out


def shape_rows(name: str, m: int, k: int, n: int) -> dict[str, float]:
    from trdq import primitives as P
    from trdq.kernels import ops
    from trdq.kernels.triton_rotate_quant import rotate_quant_triton, sylvester_hadamard
    from trdq.kernels.triton_w4a8 import pack_int4_tiled, w4a8_matmul_triton
    from trdq.rotation import fwht, hadamard_block_size

    torch.manual_seed(0)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
    bias = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    blk = hadamard_block_size(k)
    wr = fwht(w.float(), blk)
    w8, s8 = P.quantize_weight_per_channel(wr, 8, fp8=True)
    wi8, si8 = P.quantize_weight_per_channel(wr, 8)
    wi4, si4 = P.quantize_weight_per_channel(wr, 4)
    wp4 = pack_int4_tiled(wi4)
    xq, xs = rotate_quant_triton(x, rotation_block=blk)
    xq8, xs8 = rotate_quant_triton(x, rotation_block=blk, out_dtype=torch.int8)
    row_scale = xs.clone()
    h = sylvester_hadamard(blk, "cuda", torch.bfloat16) / math.sqrt(blk)

    def unfused_fp8():
        xr = (x.view(m, k // blk, blk) @ h).view(m, k).float()
        sa = (xr.abs().amax(dim=1, keepdim=True) / 448.0).clamp_min(1e-8)
        q = (xr / sa).clamp(-448, 448).to(torch.float8_e4m3fn)
        return torch._scaled_mm(
            q, w8.t(), scale_a=sa, scale_b=s8.view(1, -1), bias=bias, out_dtype=torch.bfloat16
        )

    r: dict[str, float] = {}
    r["bf16_linear"] = bench_ms(lambda: torch.nn.functional.linear(x, w, bias))
    r["fp8_scaled_mm"] = bench_ms(
        lambda: torch._scaled_mm(
            xq,
            w8.t(),
            scale_a=xs.view(-1, 1),
            scale_b=s8.view(1, -1),
            bias=bias,
            out_dtype=torch.bfloat16,
        )
    )
    r["rq_fwht_dyn"] = bench_ms(lambda: rotate_quant_triton(x, rotation_block=blk))
    mean = torch.empty(m, device=x.device)
    r["rq_center_dyn"] = bench_ms(
        lambda: rotate_quant_triton(x, rotation_block=blk, center_out=mean))
    r["rq_fwht_static"] = bench_ms(
        lambda: rotate_quant_triton(x, rotation_block=blk, row_scale=row_scale))
    r["rq_dot_dyn"] = bench_ms(lambda: rotate_quant_triton(x, rotation_block=blk, use_dot=True))
    r["rq_noro_dyn"] = bench_ms(lambda: rotate_quant_triton(x, rotation_block=None))
    clip = torch.ones(m, device=x.device)
    kw: dict[str, Any] = {"rotation_block": blk, "clip_ratio": clip}
    r["fp8_linear_op"] = bench_ms(lambda: ops.fp8_linear(x, w8, s8, bias, **kw))
    r["fp8_linear_op_static"] = bench_ms(
        lambda: ops.fp8_linear(x, w8, s8, bias, row_scale=row_scale, **kw)
    )
    r["fp8_unfused_torch"] = bench_ms(unfused_fp8)
    if k % 128 == 0:
        r["w4a8_gemm_int8act"] = bench_ms(lambda: w4a8_matmul_triton(xq8, xs8, wp4, si4, bias))
        r["w4a8_gemm_fp8act"] = bench_ms(lambda: w4a8_matmul_triton(xq, xs, wp4, si4, bias))
        r["w8a8_triton_int8"] = bench_ms(lambda: w4a8_matmul_triton(xq8, xs8, wi8, si8, bias))
        r["w4a8_linear_op"] = bench_ms(
            lambda: ops.lowbit_linear(x, wp4, si4, bias, **kw)
        )
    if m > 16:
        r["int_mm"] = bench_ms(lambda: torch._int_mm(xq8, wi8.t()))
    # achieved rates
    flops = 2 * m * k * n
    r["bf16_TFLOPs"] = flops / r["bf16_linear"] / 1e9
    r["fp8_TFLOPs"] = flops / r["fp8_scaled_mm"] / 1e9
    r["rq_GBps"] = (m * k * 2 + m * k + m * 4) / r["rq_fwht_dyn"] / 1e6
    return r


#: (name, batch x CFG, heads, tokens, head dim) of the DiTs' self-attention
ATTENTION_SHAPES = [
    ("pixart1024.attn1", 2, 16, 4096, 72),
    ("latte512.spatial", 32, 16, 1024, 72),
]
#: the FA3 comparison adds the temporal attention and Wan2.1's (one CFG branch per call)
FA3_ATTENTION_SHAPES = ATTENTION_SHAPES + [
    ("latte512.temporal", 2048, 16, 16, 72),
    ("wan21-1.3b-480p.self", 1, 12, 32760, 128),
    ("wan21-14b-480p.self", 1, 40, 32760, 128),
]


def attention_rows(b: int, h: int, s: int, d: int) -> dict[str, float]:
    """bf16 SDPA (PyTorch's default pick, cuDNN on an H100) against the 8-bit attention
    kernel (``trdq.kernels.triton_attention``) in both P V modes, and its error to fp32."""
    import torch.nn.functional as F

    from trdq.kernels.triton_attention import quant_attention_reference, quant_attention_triton

    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(b, s, h, d, device="cuda", generator=g, dtype=torch.bfloat16)
               .transpose(1, 2) for _ in range(3))  # the [B, H, S, D] views processors pass
    r = {
        "sdpa_bf16": bench_ms(lambda: F.scaled_dot_product_attention(q, k, v)),
        "int8qk_fp8pv": bench_ms(lambda: quant_attention_triton(q, k, v)),
        "int8qk_bf16pv": bench_ms(lambda: quant_attention_triton(q, k, v, pv_fp8=False)),
    }
    exact = F.scaled_dot_product_attention(q[:1].float(), k[:1].float(), v[:1].float())
    for key, pv_fp8 in (("int8qk_fp8pv", True), ("int8qk_bf16pv", False)):
        out = quant_attention_triton(q[:1], k[:1], v[:1], pv_fp8=pv_fp8)
        r[f"{key}_sqnr_dB"] = _sqnr_db(out, exact)
        ref = quant_attention_reference(q[:1], k[:1], v[:1], pv_fp8=pv_fp8)
        r[f"{key}_vs_reference_dB"] = _sqnr_db(out, ref)
    r["sdpa_TFLOPs"] = 4 * b * h * s * s * d / r["sdpa_bf16"] / 1e9
    return r


def fa3_attention_rows(b: int, h: int, s: int, d: int) -> dict[str, float]:
    """bf16 SDPA against FA3 bf16 and FA3 e4m3 (``trdq.kernels.fa3_attention``): the FP8
    kernel alone on pre-quantized inputs, and with its quantization pass (eager torch ops,
    and compiled as the served blocks run it); errors to fp32 attention and to the oracle."""
    from trdq.kernels import fa3_attention as fa3

    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(b, s, h, d, device="cuda", generator=g, dtype=torch.bfloat16)
               for _ in range(3))
    (q8, k8, v8), (qs, ks, vs), _ = fa3.quantize_attention_inputs(q, k, v)
    fp8_kernel = fa3._fa3_forward()
    compiled = torch.compile(fa3.fa3_fp8_attention)
    r = {
        "sdpa_bf16": bench_ms(lambda: fa3.sdpa_attention(q, k, v)),
        "fa3_bf16": bench_ms(lambda: fa3.fa3_attention(q, k, v)),
        "fa3_fp8_kernel_only": bench_ms(lambda: fp8_kernel(
            q8, k8, v8, q_descale=qs, k_descale=ks, v_descale=vs, softmax_scale=d**-0.5)),
        "fa3_fp8_eager": bench_ms(lambda: fa3.fa3_fp8_attention(q, k, v)),
        "fa3_fp8_compiled": bench_ms(lambda: compiled(q, k, v)),
    }
    one = (q[:1], k[:1], v[:1])
    if s > 8192:  # the fp32 references hold S x S scores: a slice of the heads
        one = (q[:1, :, :2], k[:1, :, :2], v[:1, :, :2])
    exact = fa3.sdpa_attention(*(x.float() for x in one))
    bf16 = fa3.sdpa_attention(*one)
    r["sdpa_bf16_sqnr_dB"] = _sqnr_db(bf16, exact)
    r["fa3_bf16_sqnr_dB"] = _sqnr_db(fa3.fa3_attention(*one), exact)
    fp8 = fa3.fa3_fp8_attention(*one)
    r["fa3_fp8_sqnr_dB"] = _sqnr_db(fp8, exact)
    r["fa3_fp8_vs_bf16_sdpa_dB"] = _sqnr_db(fp8, bf16)
    if s <= 8192:  # the oracle holds every head's S x S scores in fp32
        r["fa3_fp8_vs_reference_dB"] = _sqnr_db(fp8, fa3.fp8_attention_reference(*one))
    flops = 4 * b * h * s * s * d
    for key in ("sdpa_bf16", "fa3_bf16", "fa3_fp8_kernel_only", "fa3_fp8_compiled"):
        r[f"{key}_TFLOPs"] = flops / r[key] / 1e9
    r["speedup_fp8_compiled_vs_sdpa"] = r["sdpa_bf16"] / r["fa3_fp8_compiled"]
    return r


def fp8_error_budget(shapes=FA3_ATTENTION_SHAPES, tokens_cap: int = 4096) -> dict[str, dict]:
    """SQNR (dB) of the FP8 attention oracle to exact (float64) attention with each e4m3
    rounding alone and all together, on Gaussian Q, K, V at the DiTs' head dims. Runs on
    the CPU: it measures the number format, not a kernel. One batch row and two heads per
    shape; tokens capped at ``tokens_cap`` (the fp32 score matrix)."""
    from trdq.kernels import fa3_attention as fa3

    out = {}
    for name, _, _, s, d in shapes:
        s = min(s, tokens_cap)
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, s, 2, d, generator=g) for _ in range(3))
        exact = fa3.sdpa_attention(q.double(), k.double(), v.double()).float()
        row = {"tokens": s, "head_dim": d}
        for label, operands in (("qk_only", ("qk",)), ("v_only", ("v",)), ("p_only", ("p",)),
                                ("all", fa3.FP8_OPERANDS)):
            got = fa3.fp8_attention_reference(q, k, v, operands=operands)
            row[f"{label}_sqnr_dB"] = _sqnr_db(got, exact)
        row["bf16_inputs_sqnr_dB"] = _sqnr_db(
            fa3.sdpa_attention(q.bfloat16(), k.bfloat16(), v.bfloat16()), exact
        )
        out[name] = row
    return out


def _sqnr_db(x: torch.Tensor, ref: torch.Tensor) -> float:
    err = (x.float() - ref.float()).pow(2).mean() / ref.float().pow(2).mean()
    return float(-10 * torch.log10(err + 1e-30))


def wide_rotate_quant_rows(m: int, k: int) -> dict[str, float]:
    """The W8A8 activation pass (centred, smoothed, block-128 Hadamard, int8) of one wide
    linear input through the tiled and the single-pass kernels: GPU time, bandwidth (x read
    once, codes written once) and how far their codes and scales differ."""
    from trdq.kernels.triton_rotate_quant import rotate_quant_triton

    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(m, k, device="cuda", generator=gen).mul_(
        1 + 4 * torch.rand(k, device="cuda", generator=gen)).to(torch.bfloat16)
    smooth = 0.5 + torch.rand(k, device="cuda", generator=gen)
    center = torch.empty(m, device="cuda")

    def run(single: bool):
        return rotate_quant_triton(x, rotation_block=128, smooth=smooth, out_dtype=torch.int8,
                                   center_out=center, single_pass=single)

    row = {}
    outputs = {}
    for label, single in (("tiled", False), ("single_pass", True)):
        outputs[label] = run(single)
        row[label] = bench_ms(lambda single=single: run(single))
        row[f"{label}_GBps"] = (m * k * 3) / row[label] / 1e6
    (q_t, s_t), (q_s, s_s) = outputs["tiled"], outputs["single_pass"]
    row["code_max_diff"] = float((q_t.int() - q_s.int()).abs().max())
    row["scale_max_rel_diff"] = float(((s_t - s_s).abs() / s_t).max())
    row["speedup"] = row["tiled"] / row["single_pass"]
    return row


def report(section: dict, title: str, rows: dict[str, float]) -> None:
    """Keep ``rows`` under ``title`` and print them (times in ms; rates and dB as they are)."""
    section[title] = rows
    print(f"\n{title}", flush=True)
    for key, val in rows.items():
        unitless = ("TFLOP", "GBps", "dB", "speedup", "tokens", "head_dim", "diff")
        unit = "" if any(tag in key for tag in unitless) else " ms"
        print(f"  {key:24s} {val:10.4f}{unit}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write all numbers here")
    parser.add_argument(
        "--attention-only", action="store_true",
        help="only the self-attention shapes, SDPA against FA3 bf16 / FP8 (needs fa3-fwd)",
    )
    parser.add_argument(
        "--error-budget", action="store_true",
        help="(CPU) the FP8 attention oracle's error per e4m3 operand at the DiTs' head dims",
    )
    parser.add_argument(
        "--rotate-quant-wide", action="store_true",
        help="only the widest linears' activation pass, tiled against single-pass kernel",
    )
    args = parser.parse_args(argv)
    if args.error_budget:
        from trdq.machine import cpu_model

        result: dict[str, Any] = {"device": f"CPU {cpu_model()}", "torch": torch.__version__,
                  "fp8_attention_error_budget": {}}
        for title, row in fp8_error_budget().items():
            report(result["fp8_attention_error_budget"], title, row)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(result, fh, indent=1)
        return 0
    if not torch.cuda.is_available():
        print("microbench needs CUDA", file=sys.stderr)
        return 2
    import triton

    result = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "ceilings": ceilings(),
        "shapes": {},
    }
    print(json.dumps(result["ceilings"]), flush=True)
    if args.rotate_quant_wide:
        result["what"] = WIDE_ROTATE_QUANT_WHAT
        result["rotate_quant_wide"] = {}
        for name, m, k in WIDE_ROTATE_QUANT_SHAPES:
            report(result["rotate_quant_wide"], f"{name} M={m} K={k}",
                    wide_rotate_quant_rows(m, k))
            if args.json:  # partial results survive a time limit
                with open(args.json, "w") as fh:
                    json.dump(result, fh, indent=1)
        return 0
    if args.attention_only:
        result["fa3_attention"] = {}
        for name, b, h, s, d in FA3_ATTENTION_SHAPES:
            title = f"{name} B={b} H={h} S={s} D={d}"
            report(result["fa3_attention"], title, fa3_attention_rows(b, h, s, d))
            if args.json:  # partial results survive a time limit
                with open(args.json, "w") as fh:
                    json.dump(result, fh, indent=1)
        return 0
    for name, m, k, n in PIXART_SHAPES:
        report(result["shapes"], f"{name} M={m} K={k} N={n}", shape_rows(name, m, k, n))
    result["attention"] = {}
    for name, b, h, s, d in ATTENTION_SHAPES:
        report(result["attention"], f"{name} B={b} H={h} S={s} D={d}", attention_rows(b, h, s, d))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

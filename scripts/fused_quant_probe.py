"""GPU probe: what the e4m3 quantizer costs when Inductor fuses it into LayerNorm or GELU.

Why: `fp8-norot`'s activation quantizer is torch ops (`ops.fp8_linear_unrotated`) that
torch.compile fuses into the kernel producing x. On the H100 (2026-12-07 profiles,
docs/journal/2026-12-07-fp8-norot-families.md) those fused kernels took ~1.6x the time of
the bf16 kernels they replace although they write fewer bytes: Latte's LayerNorm kernels
18.4 -> 27.8 ms a step, its GELU kernels 11.9 -> 17.3 ms. This times each candidate
arithmetic on the served shapes, compiled the way the blocks are, to find the cause:

- ``bf16``: the producer alone (the baseline kernel);
- ``div``: what ships (per-row scale gathered by timestep group and CFG half, a division);
- ``mul_pre``: multiplication by precomputed reciprocals (the scale tables inverted once);
- ``scalar``: one reciprocal for all rows (no per-row gather);
- ``pre_rows``: ``mul_pre`` with the reciprocals already one per row (no gather in the
  kernel);
- ``nocast``: ``mul_pre`` written as bf16 (is the e4m3 store the cost?);
- ``cast_only``: the producer's output cast to e4m3 unscaled (the store alone).

The producers: ``ln`` (LayerNorm + adaLN modulate), ``ln-res`` (the residual add before it,
the new residual written in bf16 as well, as in the blocks) and ``gelu``.

Run on the device: ``. scripts/device_env.sh && python3 scripts/fused_quant_probe.py``;
GPU microseconds go to ``$OUT/fused-quant-probe.json`` (filed as docs/bench/fused-quant-probe-h100.json), Inductor's code for the bf16,
div and mul_pre variants to ``$OUT/code-*.py``.
"""

from __future__ import annotations

import functools
import json
import os

import torch
import torch.nn.functional as F

E4M3_MAX = 448.0


def rows_scale(pair: torch.Tensor, group: torch.Tensor, rows: int) -> torch.Tensor:
    """The served per-row value: this group's (uncond, cond) pair, half the rows each."""
    return pair.index_select(0, group.reshape(1)).squeeze(0).repeat_interleave(rows // 2)


def quantize(y: torch.Tensor, kind: str, scale: torch.Tensor, inverse: torch.Tensor):
    if kind == "div":  # ops.fp8_linear_unrotated today
        v = y.float() / scale[:, None]
    elif kind == "mul_pre":
        v = y.float() * inverse[:, None]
    elif kind == "scalar":
        v = y.float() * inverse[:1, None]
    elif kind == "pre_rows":
        v = y.float() * inverse[:, None]
    elif kind == "cast_only":
        return y.to(torch.float8_e4m3fn), scale
    elif kind == "nocast":
        return torch.clamp(y.float() * inverse[:, None], -E4M3_MAX, E4M3_MAX).to(y.dtype), scale
    else:
        raise ValueError(kind)
    return torch.clamp(v, -E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn), scale.contiguous()


def producer(x, shift, scale, op: str):
    if op == "ln":  # LayerNorm + adaLN modulate, as before attn1 and the feed-forward
        return F.layer_norm(x, x.shape[-1:]) * (1 + scale) + shift
    if op == "ln-res":  # the gated residual add first; the new residual is an output too
        residual = x + scale * x.flip(0)
        return F.layer_norm(residual, x.shape[-1:]) * (1 + scale) + shift, residual
    return F.gelu(x, approximate="tanh")  # the feed-forward's hidden activation


def make(op: str, kind: str):
    def fn(x, shift, mod_scale, pair, group, inverse_pair):
        y = producer(x, shift, mod_scale, op)
        extra = ()
        if isinstance(y, tuple):
            y, *extra = y
        if kind == "bf16":
            return (y, *extra)
        rows = x.shape[0]
        if kind == "pre_rows":  # computed outside: the kernel reads one value per row
            return (*quantize(y, kind, pair, inverse_pair), *extra)
        return (*quantize(y, kind, rows_scale(pair, group, rows),
                          rows_scale(inverse_pair, group, rows)), *extra)
    return fn


def main() -> None:
    """PROBE_PARTS (comma list, default inductor,multikernel,handwritten: the library's
    kernels) picks what runs,
    PROBE_KINDS the quantizer variants of the inductor part; PROBE_CODE=1 also writes
    Inductor's code (code-*.py)."""
    import triton.testing
    from torch._inductor.utils import run_and_get_code

    out = os.environ.get("OUT", "/tmp")
    parts = os.environ.get("PROBE_PARTS", "inductor,multikernel,handwritten").split(",")
    torch.manual_seed(0)
    results: dict[str, float | str] = {"device": torch.cuda.get_device_name()}

    def record(name: str, fn) -> None:
        us = triton.testing.do_bench(fn, warmup=25, rep=100) * 1e3
        results[name] = round(us, 1)
        print(f"{name}: {us:.1f} us", flush=True)
        with open(f"{out}/fused-quant-probe.json", "w") as fh:
            json.dump(results, fh, indent=1)

    shapes = (("latte", "ln", 32768, 1152), ("latte-res", "ln-res", 32768, 1152),
              ("pixart-ff", "gelu", 8192, 4608))
    for tag, op, rows, width in shapes:
        x = torch.randn(rows, width, device="cuda", dtype=torch.bfloat16)
        shift = torch.randn(width, device="cuda", dtype=torch.bfloat16) * 0.1
        mod_scale = torch.randn(width, device="cuda", dtype=torch.bfloat16) * 0.1
        pair = torch.rand(8, 2, device="cuda") * 0.02 + 0.01
        group = torch.tensor(3, device="cuda")
        runs = []
        if "inductor" in parts:
            kinds = os.environ.get("PROBE_KINDS", "bf16,div,mul_pre,pre_rows,scalar,nocast,cast_only")
            runs += [(kind, 0) for kind in kinds.split(",")]
        if "multikernel" in parts and op != "gelu":  # persistent reductions forced
            runs += [(kind, 2) for kind in ("bf16", "div", "pre_rows")]
        for kind, multi_kernel in runs:
            args = (x, shift, mod_scale, pair, group, 1.0 / pair)
            if kind == "pre_rows":
                per_row = rows_scale(pair, group, rows)
                args = (x, shift, mod_scale, per_row, group, 1.0 / per_row)
            torch._dynamo.reset()
            with torch._inductor.config.patch({"triton.multi_kernel": multi_kernel}):
                fn = torch.compile(make(op, kind))
                _, code = run_and_get_code(fn, *args)
            record(f"{tag} {op} {kind}" + (f" multi_kernel={multi_kernel}" if multi_kernel else ""),
                   lambda fn=fn, args=args: fn(*args))
            if os.environ.get("PROBE_CODE") == "1" and kind in ("bf16", "div") and not multi_kernel:
                with open(f"{out}/code-{tag}-{kind}.py", "w") as fh:
                    fh.write("\n\n#####\n\n".join(code))
        if "handwritten" in parts:
            try:
                handwritten(tag, op, x, shift, mod_scale, pair, group, record, results)
            except Exception as exc:  # noqa: BLE001 (a probe: report and go on)
                results[f"{tag} handwritten error"] = repr(exc)[:400]
                print(f"{tag} handwritten failed: {exc!r}", flush=True)


def handwritten(tag, op, x, shift, mod_scale, pair, group, record, results) -> None:
    """The library's kernels for the same work (``trdq.kernels.triton_norm_quant``,
    ``triton_gelu_quant``): codes against the eager quantizer, and their times. The rows
    are two samples (the CFG halves), each with the modulation vectors given."""
    from trdq.kernels.triton_gelu_quant import gelu_quant_triton
    from trdq.kernels.triton_norm_quant import add_norm_modulate_quant_triton

    rows, width = x.shape
    inverse_rows = 1.0 / rows_scale(pair, group, rows)
    ref = make(op, "pre_rows")(x, shift, mod_scale, rows_scale(pair, group, rows), group,
                               inverse_rows)
    if op == "gelu":
        call = functools.partial(gelu_quant_triton, x, inverse_rows)
    else:
        per_sample = [v.expand(2, 1, width).contiguous() for v in (mod_scale, shift)]
        x3 = x.view(2, rows // 2, width)
        # ln-res: the residual is x + gate * x.flip(0) (the bytes Inductor's variant reads)
        branch = x.flip(0).contiguous().view_as(x3) if op == "ln-res" else None
        gate = per_sample[0] if op == "ln-res" else None
        call = functools.partial(add_norm_modulate_quant_triton, x3, branch, gate,
                                 per_sample[1], per_sample[0], inverse_rows, 1e-5)
    out = call()
    q = out if op == "gelu" else out[1]
    differ = q.float() != ref[0].float()  # eager rounds to bf16 between its ops
    results[f"{tag} library kernel codes differing from eager"] = differ.float().mean().item()
    record(f"{tag} {op} library kernel", call)

if __name__ == "__main__":
    main()

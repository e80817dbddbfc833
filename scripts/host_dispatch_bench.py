"""Host time of one W8A8 linear op call with the Triton launches stubbed out: what the host
pays per quantized linear besides the launches themselves (a step without CUDA graphs is
bound by it). ``trdq::lowbit_linear`` as defined (``trdq.kernels.oplib.define_op``) against
the same function wrapped by ``torch.library.custom_op`` and the bare Python function,
interleaved in one process, min of 15 repeats of 500 calls, under ``no_grad`` (diffusers
pipelines) and ``inference_mode`` (the bench).

Runs on a CPU (no GPU needed: the GPU path's host code runs on CPU tensors, the kernel
launches patched out in this process). ``python scripts/host_dispatch_bench.py [JSON]``.
"""
import json
import platform
import sys
import time

import torch

from trdq.kernels import ops
from trdq.kernels import triton_rotate_quant as rq
from trdq.kernels import triton_w4a8 as w4
from trdq.machine import cpu_model


class _NoLaunch:
    def __getitem__(self, grid):
        return lambda *a, **k: None


rq._rotate_quant_rows_autotuned = _NoLaunch()
w4._lowbit_gemm_autotuned = _NoLaunch()
ops.fast_path_available = lambda x: True  # the GPU path's host code, on CPU tensors


def _gemm(q, sa, w, ws, b, dt, center=None, weight_sum=None, paired=False, activation=""):
    return w4.w4a8_matmul_triton(q, sa, w, ws, b, dt, center=center, weight_sum=weight_sum,
                                 paired=paired, activation=activation, tma=False)


ops.lowbit_gemm = _gemm
wrapped = torch.library.custom_op("probe::lowbit_linear", ops._lowbit_linear, mutates_args=())
wrapped.register_fake(ops._linear_fake)

k, n, m = 1152, 1152, 64
x = torch.randn(m, k, dtype=torch.bfloat16)
w = torch.randint(-127, 128, (n, k), dtype=torch.int8)
ws, bias = torch.rand(n), torch.randn(n, dtype=torch.bfloat16)
sm, clip, wsum = torch.rand(k) + 0.5, torch.full((m,), 0.9), torch.randn(n)
args = (x, w, ws, bias, sm, None, 128, clip, False, wsum, m // 2, "gelu_tanh")
calls = {"define_op (Library.impl)": lambda: torch.ops.trdq.lowbit_linear(*args),
         "torch.library.custom_op": lambda: torch.ops.probe.lowbit_linear(*args),
         "the Python function itself": lambda: ops._lowbit_linear(*args)}
out = {"cpu": cpu_model() or platform.machine(), "torch": torch.__version__,
       "shape": f"M={m} K={k} N={n}, centring, CFG-delta, GELU epilogue", "us_per_call": {}}
for mode in (torch.no_grad, torch.inference_mode):
    best = {name: 1e9 for name in calls}
    with mode():
        for _ in range(15):
            for name, f in calls.items():
                t = time.perf_counter()
                for _ in range(500):
                    f()
                best[name] = min(best[name], (time.perf_counter() - t) / 500 * 1e6)
    out["us_per_call"][mode.__name__] = {name: round(v, 1) for name, v in best.items()}
print(json.dumps(out, indent=1))
if len(sys.argv) > 1:
    with open(sys.argv[1], "w") as fh:
        json.dump(out, fh, indent=1)

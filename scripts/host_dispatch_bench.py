"""Host time of one W8A8 linear op call, everything but the Triton launches themselves: what
the host pays per quantized linear besides them (a step without CUDA graphs is bound by it).

Compared in one process, interleaved, min of 15 repeats of 500 calls, under ``no_grad``
(diffusers pipelines) and ``inference_mode`` (the bench):
- the operator's dispatch: ``trdq::lowbit_linear`` as defined (``oplib.define_op``,
  ``Library.impl``) against the same function wrapped by ``torch.library.custom_op``;
- the launch path: ``launch_triton`` reusing the autotuner's pick against Triton's
  ``Autotuner.run`` on every launch (what the kernels did before).
The JIT functions' own ``run`` (argument binding, the driver launch) is patched out.

Runs on a CPU (the GPU path's host code on CPU tensors; no GPU needed).
``python scripts/host_dispatch_bench.py [JSON]``.
"""
import json
import platform
import sys
import time

import torch

from trdq.kernels import launch, ops
from trdq.kernels import triton_rotate_quant as rq
from trdq.kernels import triton_w4a8 as w4
from trdq.kernels.oplib import linear_fake
from trdq.machine import cpu_model

for tuner in (rq._rotate_quant_rows_autotuned, w4._lowbit_gemm_autotuned):
    tuner.fn.run = lambda *args, **kwargs: None  # the launch itself
    tuner.do_bench = lambda fn, quantiles: [1.0, 1.0, 1.0]  # no GPU clock to tune with
ops.fast_path_available = lambda x: True  # the GPU path's host code, on CPU tensors


def _gemm(q, sa, w, ws, b, dt, center=None, weight_sum=None, paired=False, activation=""):
    return w4.w4a8_matmul_triton(q, sa, w, ws, b, dt, center=center, weight_sum=weight_sum,
                                 paired=paired, activation=activation, tma=False)


ops.lowbit_gemm = _gemm


wrapped = torch.library.custom_op("probe::lowbit_linear", ops._lowbit_linear, mutates_args=())
wrapped.register_fake(linear_fake)


class _Forgetful(dict):
    """A pick cache that keeps nothing: every launch goes through ``Autotuner.run``."""

    def __setitem__(self, key, value):
        pass


k, n, m = 1152, 1152, 64
x = torch.randn(m, k, dtype=torch.bfloat16)
w = torch.randint(-127, 128, (n, k), dtype=torch.int8)
ws, bias = torch.rand(n), torch.randn(n, dtype=torch.bfloat16)
sm, clip, wsum = torch.rand(k) + 0.5, torch.full((m,), 0.9), torch.randn(n)
# the operator's positional order (what ops.lowbit_linear passes it)
args = (x, w, ws, bias, 128, sm, None, clip, False, wsum, m // 2, "gelu_tanh")
picks = launch._CHOSEN_CONFIGS
variants = {
    "define_op + launch_triton (now)": (lambda: torch.ops.trdq.lowbit_linear(*args), picks),
    "define_op + Autotuner.run": (lambda: torch.ops.trdq.lowbit_linear(*args), _Forgetful()),
    "custom_op + Autotuner.run (before)": (lambda: torch.ops.probe.lowbit_linear(*args),
                                           _Forgetful()),
    "the Python function + launch_triton": (lambda: ops._lowbit_linear(*args), picks),
}
out = {"cpu": cpu_model() or platform.machine(), "torch": torch.__version__,
       "shape": f"M={m} K={k} N={n}, centring, CFG-delta, GELU epilogue",
       "launches": "JIT run patched out (binding + driver launch not included)",
       "us_per_call": {}}
for mode in (torch.no_grad, torch.inference_mode):
    best = dict.fromkeys(variants, 1e9)
    with mode():
        for _ in range(15):
            for name, (call, cache) in variants.items():
                launch._CHOSEN_CONFIGS = cache
                call()
                t = time.perf_counter()
                for _ in range(500):
                    call()
                best[name] = min(best[name], (time.perf_counter() - t) / 500 * 1e6)
    out["us_per_call"][mode.__name__] = {name: round(v, 1) for name, v in best.items()}
launch._CHOSEN_CONFIGS = picks
print(json.dumps(out, indent=1))
if len(sys.argv) > 1:
    with open(sys.argv[1], "w") as fh:
        json.dump(out, fh, indent=1)

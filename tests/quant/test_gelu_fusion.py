"""A feed-forward's GELU (tanh) moved into the quantized linear before it: the same
outputs on every path, applied in the GEMM epilogue only where that output is served."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.activations import GELU
from torch.nn import functional as F

from tests.helpers.quant import cfg_delta_layer, fast, run_image
from trdq import api
from trdq import primitives as P
from trdq.kernels import get_backend, ops
from trdq.nn import QuantLinear
from trdq.quant_transforms import LayerQuantParams
from trdq.testing.tiny import TINY_PROMPTS, tiny_pixart_pipeline
from trdq.timestep import QuantContext


def test_quantize_moves_each_tanh_gelu_into_its_linear():
    pipe = tiny_pixart_pipeline()
    api.quantize(pipe, fast("w8a8"), progress=False, calibration_prompts=TINY_PROMPTS)
    gelus = [m for m in pipe.transformer.modules() if isinstance(m, GELU)]
    assert gelus and all(m.proj.output_activation == "gelu_tanh" for m in gelus)
    assert "then gelu_tanh" in repr(gelus[0].proj)
    module = gelus[0]
    x = torch.randn(2, 7, module.proj.in_features)
    fused = module(x)
    assert (fused < 0).any() and fused.min() > -0.2  # GELU's range: it was applied once
    # undone: the module's own GELU on the linear's plain output gives the same numbers (to
    # float rounding: on CPU, cpu_int8's C epilogue computes GELU with its own exp)
    module.proj.output_activation = ""
    del module.gelu
    torch.testing.assert_close(fused, module(x), rtol=1e-5, atol=1e-6)
    assert run_image(pipe, TINY_PROMPTS[:1], steps=2).isfinite().all()


@pytest.mark.parametrize("delta_half", [0, 6])
def test_lowbit_linear_applies_the_activation_to_the_served_output(delta_half):
    """The op's CPU path (the GPU's oracle): GELU of what it returns without it, the CFG
    cond rows included (restored before the activation)."""
    torch.manual_seed(0)
    x = torch.randn(12, 128) * 2
    weight = torch.randint(-127, 128, (40, 128), dtype=torch.int8)
    w_scale, bias = torch.rand(40) * 1e-3, torch.randn(40)
    args = (x, weight, w_scale, bias)
    kw = {"rotation_block": 128, "clip_ratio": torch.ones(12), "delta_half": delta_half}
    plain = ops.lowbit_linear(*args, **kw)
    activated = ops.lowbit_linear(*args, **kw, activation="gelu_tanh")
    torch.testing.assert_close(activated, F.gelu(plain, approximate="tanh"), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="epilogue activation"):
        from trdq.kernels.triton_w4a8 import w4a8_matmul_reference

        w4a8_matmul_reference(torch.zeros(2, 128, dtype=torch.int8), torch.ones(2), weight,
                              w_scale, activation="relu")


@pytest.mark.parametrize("backend_fuses_centering", [True, False])
def test_quant_linear_asks_for_the_epilogue_only_where_the_output_is_served(
    backend_fuses_centering,
):
    """cuda_w4a8 (its ops' CPU path here) applies the GELU in the GEMM epilogue when the
    centring and CFG restore happen inside it; when QuantLinear centres around the call,
    it applies the GELU itself, after. Both give GELU of the plain layer's output."""
    seen = []

    class Recording(type(get_backend("cuda_w4a8"))):
        fuses_centering = backend_fuses_centering

        def linear(self, x, packed, act, bias, activation=""):
            seen.append(activation)
            return super().linear(x, packed, act, bias, activation)

    layer, x = cfg_delta_layer(Recording(), seed=3)
    plain = layer(x)
    layer.output_activation = "gelu_tanh"
    activated = layer(x)
    assert seen == ["", "gelu_tanh" if backend_fuses_centering else ""]
    torch.testing.assert_close(activated, F.gelu(plain, approximate="tanh"),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fused_gelu_on_the_gpu_matches_the_modules_own_gelu():
    """A PixArt-sized feed-forward GELU on cuda_w4a8 (GELU in the paired epilogue, through
    tanh.approx) against the same layer with the module's own GELU after it."""
    from trdq.integrations.diffusers import fuse_gelu_into_linears

    torch.manual_seed(6)
    ctx = QuantContext(num_groups=1, group=0, cfg_active=True)
    params = LayerQuantParams(128, None, torch.ones(1, 2), torch.tensor([[0.95, 0.95]]))
    module = GELU(1152, 4608, approximate="tanh").cuda().to(torch.bfloat16)
    module.proj = QuantLinear.from_linear(module.proj, params, get_backend("cuda_w4a8"), ctx,
                                          act_mode="dynamic", act_center=True, cfg_delta=True)
    x_u = torch.randn(1, 512, 1152, device="cuda") * 2
    x = torch.cat([x_u, x_u + 0.3 * torch.randn_like(x_u)]).to(torch.bfloat16)
    separate = module(x).float()
    assert fuse_gelu_into_linears(torch.nn.Sequential(module), QuantLinear) == ["0"]
    fused = module(x).float()
    assert P.sqnr_db(separate, fused) > 40

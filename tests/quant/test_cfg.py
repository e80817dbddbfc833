"""CFG-wise parameters: each half of a [uncond, cond] batch uses its own scales."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.quant import cfg_delta_layer, fast, run_image
from trdq import api
from trdq import primitives as P
from trdq.config import QuantConfig
from trdq.kernels import ActQuant, get_backend
from trdq.nn import QuantLinear
from trdq.quant_transforms import LayerQuantParams
from trdq.testing.tiny import TINY_PROMPTS, tiny_pixart_pipeline
from trdq.timestep import QuantContext


def test_quant_linear_applies_uncond_and_cond_scales_in_one_call():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 32)
    ctx = QuantContext(num_groups=2, group=1, cfg_active=True)
    scales = torch.tensor([[0.01, 0.02], [0.03, 0.08]])  # [G, (uncond, cond)]
    params = LayerQuantParams(64, None, scales, torch.ones(2, 2))
    backend = get_backend("cpu_int8")
    calls = []
    original = backend.linear

    def spy(x, packed, act, bias):
        calls.append(act)
        return original(x, packed, act, bias)

    layer = QuantLinear.from_linear(linear, params, backend, ctx, weight_bits=8)
    layer.backend = type("Spy", (), {"linear": staticmethod(spy), "name": "spy"})()
    x = torch.randn(4, 5, 64)  # batch 4 = 2 uncond + 2 cond
    y = layer(x)
    assert len(calls) == 1  # one launch for both halves
    rows = calls[0].row_scale
    assert rows.shape == (20,)
    assert torch.all(rows[:10] == 0.03) and torch.all(rows[10:] == 0.08)
    # each half equals a call with only its own scale
    ref = get_backend("reference")
    for half, scale in ((slice(0, 2), 0.03), (slice(2, 4), 0.08)):
        xh = x[half].reshape(-1, 64)
        act = ActQuant(rotation_block=64, row_scale=torch.full((xh.shape[0],), scale))
        expect = ref.linear(xh, layer.packed, act, linear.bias)
        assert P.sqnr_db(expect, y[half].reshape(-1, 32)) > 60
    # without CFG every row uses the cond scale
    ctx.cfg_active = False
    calls.clear()
    layer(x)
    assert torch.all(calls[0].row_scale == 0.08)


def test_pipeline_halves_use_their_own_calibrated_parameters():
    """Static mode: each half of [uncond x B, cond x B] gets its own per-group scale."""
    pipe = tiny_pixart_pipeline(outliers=True)
    api.quantize(pipe, fast("w8a8-static", num_groups=2), progress=False,
                 calibration_prompts=TINY_PROMPTS)
    state = api.get_state(pipe)
    seen: list[tuple[int, bool, torch.Tensor]] = []
    differing = []
    for name, layer in state.layers.items():
        scales = layer.act_scale_by_group
        if not torch.allclose(scales[:, 0], scales[:, 1]):
            differing.append(name)
    assert differing, "calibration gave identical uncond/cond scales everywhere"
    layer = state.layers[differing[0]]
    original = layer.backend

    class Spy:
        name = "spy"
        fuses_centering = original.fuses_centering
        fuses_cfg_delta = original.fuses_cfg_delta
        restores_cfg_delta = original.restores_cfg_delta

        def linear(self, x, packed, act, bias):
            seen.append((state.context.group, state.context.cfg_active, act.row_scale.clone()))
            return original.linear(x, packed, act, bias)

    layer.backend = Spy()
    run_image(pipe, TINY_PROMPTS[:2], steps=4, guidance=4.5)  # 2 requests batched: [u,u,c,c]
    assert seen and all(cfg for _, cfg, _ in seen)
    for group, _, rows in seen:
        half = rows.shape[0] // 2
        assert torch.all(rows[:half] == layer.act_scale_by_group[group, 0])
        assert torch.all(rows[half:] == layer.act_scale_by_group[group, 1])
    seen.clear()
    run_image(pipe, TINY_PROMPTS[:2], steps=4, guidance=1.0)  # no CFG: cond parameters
    assert seen and not any(cfg for _, cfg, _ in seen)
    for group, _, rows in seen:
        assert torch.all(rows == layer.act_scale_by_group[group, 1])


def test_dynamic_halves_use_their_own_clip_ratios():
    """Dynamic mode (the default): per-token scales, clipped by each half's own ratio, in
    one launch (a per-row clip vector read on the device)."""
    pipe = tiny_pixart_pipeline(outliers=True)
    api.quantize(pipe, fast("w8a8", num_groups=2), progress=False,
                 calibration_prompts=TINY_PROMPTS)
    state = api.get_state(pipe)
    layer = next(iter(state.layers.values()))
    # Distinct known ratios per (group, half), so the spy can tell which one each row got.
    clips = torch.tensor([[0.91, 0.97], [0.93, 0.99]])
    layer.set_activation_params(layer.act_scale_by_group, clips)
    original = layer.backend
    seen: list[tuple[int, torch.Tensor]] = []

    class Spy:
        name = "spy"
        fuses_centering = original.fuses_centering
        fuses_cfg_delta = original.fuses_cfg_delta
        restores_cfg_delta = original.restores_cfg_delta

        def linear(self, x, packed, act, bias):
            assert act.row_scale is None  # dynamic: scales come from each token
            seen.append((state.context.group, act.row_clip(x.shape[0], x.device).clone()))
            return original.linear(x, packed, act, bias)

    layer.backend = Spy()
    run_image(pipe, TINY_PROMPTS[:2], steps=4, guidance=4.5)  # [u, u, c, c]: one call each
    assert seen
    for group, rows in seen:
        half = rows.shape[0] // 2
        assert torch.allclose(rows[:half], clips[group, 0].expand(half))
        assert torch.allclose(rows[half:], clips[group, 1].expand(half))
    seen.clear()
    run_image(pipe, TINY_PROMPTS[:2], steps=4, guidance=1.0)  # no CFG: cond ratio
    assert seen and all(torch.allclose(rows, clips[g, 1].expand_as(rows)) for g, rows in seen)


def _delta_layer(cfg_delta: bool, ctx: QuantContext, bias: bool = True) -> QuantLinear:
    torch.manual_seed(1)
    linear = torch.nn.Linear(128, 48, bias=bias)
    params = LayerQuantParams(128, None, torch.ones(1, 2), torch.ones(1, 2))
    return QuantLinear.from_linear(linear, params, get_backend("cpu_int8"), ctx,
                                   act_mode="dynamic", act_center=True, cfg_delta=cfg_delta)


def test_cfg_delta_quantizes_cond_rows_as_differences():
    """Cond rows go through the GEMM as x_c - x_u and come back as y_u + W d: identical
    halves get identical outputs, and the guided output is closer to the exact one."""
    ctx = QuantContext(num_groups=1, group=0, cfg_active=True)
    plain, delta = _delta_layer(False, ctx), _delta_layer(True, ctx)
    linear = torch.nn.Linear(128, 48)
    linear.load_state_dict({"weight": _dequantized(delta), "bias": delta.bias})
    x_u = torch.randn(3, 10, 128) * 4
    same = delta(torch.cat([x_u, x_u]))
    # the delta rows are exact zeros: the halves differ only by adding and removing the bias
    torch.testing.assert_close(same[:3], same[3:], rtol=0, atol=1e-5)
    x_c = x_u + 0.2 * torch.randn_like(x_u)  # guidance: the halves differ a little
    x = torch.cat([x_u, x_c])
    with torch.no_grad():
        exact = linear(x)

    def guided(y, w=4.5):
        return y[:3] + w * (y[3:] - y[:3])

    err_plain = P.sqnr_db(guided(exact), guided(plain(x)))
    err_delta = P.sqnr_db(guided(exact), guided(delta(x)))
    assert err_delta > err_plain + 6, (err_plain, err_delta)
    # without CFG the layer is the plain one
    ctx.cfg_active = False
    torch.testing.assert_close(delta(x), plain(x))


def test_cfg_delta_without_bias_and_config_rules():
    ctx = QuantContext(num_groups=1, group=0, cfg_active=True)
    layer = _delta_layer(True, ctx, bias=False)
    x_u = torch.randn(2, 4, 128)
    y = layer(torch.cat([x_u, x_u]))
    assert torch.equal(y[:2], y[2:])
    assert "cfg_delta" in layer.extra_repr()
    params = LayerQuantParams(128, None, torch.ones(1, 2), torch.ones(1, 2))
    with pytest.raises(ValueError, match="dynamic"):
        QuantLinear.from_linear(torch.nn.Linear(128, 8), params, get_backend("cpu_int8"), ctx,
                                act_mode="static", cfg_delta=True)
    with pytest.raises(ValueError, match="dynamic"):
        QuantConfig(act_mode="static", cfg_delta=True)
    assert QuantConfig.preset("w8a8").cfg_delta and QuantConfig.preset("w4a8").cfg_delta
    assert not QuantConfig.preset("w8a8-rot-groups-search").cfg_delta
    assert not QuantConfig.preset("w8a8-static").cfg_delta


@pytest.mark.parametrize("backend", ["cuda_fp8", "cuda_w4a8", "cpu_int8"])
@pytest.mark.parametrize("center", [False, True])
def test_fused_cfg_delta_matches_the_python_subtraction(backend, center):
    """The CUDA backends difference the cond rows inside their ops (whose reference path
    runs here on the CPU): same output as QuantLinear's own subtraction before the call."""
    assert get_backend(backend).fuses_cfg_delta
    assert not get_backend("reference").fuses_cfg_delta
    seen = []

    class Fused(type(get_backend(backend))):
        def linear(self, x, packed, act, bias):
            seen.append(act.cfg_delta_half)
            return super().linear(x, packed, act, bias)

    class Unfused(Fused):
        fuses_cfg_delta = False

    class FusedDeltaOnly(Fused):  # centring left to QuantLinear: the delta must be too
        fuses_centering = False

    layer, x = cfg_delta_layer(Fused(), seed=4, center=center)
    fused = layer(x)
    layer.backend = Unfused()
    unfused = layer(x)
    assert seen == [10, 0]  # half of the 20 rows, then the Python path
    torch.testing.assert_close(fused, unfused)
    if center:
        layer.backend = FusedDeltaOnly()
        assert P.sqnr_db(unfused, layer(x)) > 60 and seen[-1] == 0



@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", ["cuda_fp8", "cuda_w4a8"])
def test_fused_cfg_delta_on_the_gpu_matches_the_python_subtraction(backend):
    """The Triton kernel's in-load subtraction (float32) against QuantLinear's own (bf16,
    then the same kernel), through a whole centred layer with CFG: Latte/PixArt-like rows."""
    unfused_backend = type(get_backend(backend))()
    unfused_backend.fuses_cfg_delta = False
    torch.manual_seed(5)
    ctx = QuantContext(num_groups=1, group=0, cfg_active=True)
    params = LayerQuantParams(128, None, torch.ones(1, 2), torch.tensor([[0.9, 0.95]]))
    linear = torch.nn.Linear(1152, 1152).cuda().to(torch.bfloat16)  # as diffusers loads it
    layer = QuantLinear.from_linear(linear, params, get_backend(backend), ctx,
                                    weight_bits=8, act_mode="dynamic", act_center=True,
                                    cfg_delta=True)
    x_u = torch.randn(2, 300, 1152, device="cuda") * 3
    x = torch.cat([x_u, x_u + 0.3 * torch.randn_like(x_u)]).to(torch.bfloat16)
    fused = layer(x).float()
    layer.backend = unfused_backend
    unfused = layer(x).float()
    exact = torch.nn.functional.linear(x.float(), linear.weight.float(), linear.bias.float())
    floor = 30 if backend == "cuda_fp8" else 40  # e4m3 activations round coarser
    assert P.sqnr_db(unfused, fused) > floor
    # the fused form is no worse against the float layer, on either half
    for rows in (slice(0, 2), slice(2, 4)):
        assert P.sqnr_db(exact[rows], fused[rows]) > P.sqnr_db(exact[rows], unfused[rows]) - 0.5

def _dequantized(layer: QuantLinear) -> torch.Tensor:
    """The layer's effective float weight in the input basis (rotation undone)."""
    from trdq.rotation import rotate_weight

    q, scale = layer.backend.unpack(layer.packed)
    w_rot = q.float() * scale[:, None]
    return rotate_weight(w_rot, layer.rotation_block)  # a normalized Hadamard is its own inverse

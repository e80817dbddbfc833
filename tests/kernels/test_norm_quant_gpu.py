"""CUDA: the fused block's kernel (trdq.kernels.triton_norm_quant) in e4m3 against its
oracle, and fused PixArt blocks against diffusers' forward on the cuda_fp8 backend,
eager and compiled (skipped without an sm_89+ GPU and triton)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from tests.helpers.quant import fast, run_image, run_video
from trdq import api
from trdq.integrations.diffusers import fuse_qkv_projections
from trdq.kernels import triton_norm_quant as nq
from trdq.nn.fused_block import fuse_block_norms
from trdq.primitives import psnr_db
from trdq.testing.tiny import TINY_PROMPTS, tiny_latte_pipeline, tiny_pixart_pipeline

_OK = (torch.cuda.is_available() and importlib.util.find_spec("triton") is not None
       and torch.cuda.get_device_capability() >= (8, 9))
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not _OK, reason="needs CUDA sm_89+ and triton")]


@pytest.mark.parametrize("with_branch,with_gate", [(True, True), (True, False), (False, False)])
@pytest.mark.parametrize("rows,dim", [(2 * 4096, 1152), (2 * 16, 1152), (6, 3072)])
def test_kernel_codes_match_reference(with_branch, with_gate, rows, dim):
    g = torch.Generator(device="cuda").manual_seed(rows + dim)
    batch, tokens = 2, rows // 2

    def randn(*shape, gain=1.0):
        return (torch.randn(*shape, device="cuda", generator=g) * gain).to(torch.bfloat16)

    x, shift, scale = randn(batch, tokens, dim, gain=3), randn(batch, 1, dim, gain=0.1), randn(batch, 1, dim, gain=0.1)
    branch = randn(batch, tokens, dim) if with_branch else None
    gate = randn(batch, 1, dim) if with_gate else None
    inverse = torch.rand(rows, device="cuda", generator=g) * 40 + 10
    residual, codes = nq.add_norm_modulate_quant_triton(x, branch, gate, shift, scale, inverse, 1e-6)
    ref_residual, ref_codes = nq.add_norm_modulate_quant_reference(
        x, branch, gate, shift, scale, inverse, 1e-6)
    assert residual.shape == ref_residual.shape  # both empty without a branch
    # the kernel may contract x + gate * branch into one FMA: one bf16 step now and then
    diff, size = (residual.float() - ref_residual.float()).abs(), ref_residual.float().abs()
    assert (diff <= size * 2**-7 + 1e-30).all()
    assert (diff > size * 2**-8).sum().item() <= 1e-3 * residual.numel()
    # float32 sums in another order: a code may round the other way at a boundary
    step = (codes.float() - ref_codes.float()).abs() / ref_codes.float().abs().clamp_min(2**-6)
    assert step.max() <= 0.125 and (codes.float() != ref_codes.float()).float().mean() < 0.01


@pytest.mark.parametrize("rows,cols", [(8192, 4608), (31, 1030)])
def test_gelu_quant_codes_match_reference(rows, cols):
    from trdq.kernels import triton_gelu_quant as gq

    g = torch.Generator(device="cuda").manual_seed(rows)
    x = (torch.randn(rows, cols, device="cuda", generator=g) * 3).to(torch.bfloat16)
    inverse = torch.rand(rows, device="cuda", generator=g) * 40 + 10
    codes, ref = gq.gelu_quant_triton(x, inverse).float(), gq.gelu_quant_reference(x, inverse).float()
    assert ((codes - ref).abs() / ref.abs().clamp_min(2**-6)).max() <= 0.125
    assert (codes != ref).float().mean() < 0.01


@pytest.mark.parametrize("rows,prefix_cols,cols", [(4608, 3072, 12288), (31, 40, 1030)])
def test_cat_gelu_quant_codes_match_reference(rows, prefix_cols, cols):
    """FLUX single blocks' proj_out input (attention | GELU(mlp)) at FLUX-1024's shape and
    a masked one, from a row-strided prefix."""
    from trdq.kernels import triton_gelu_quant as gq

    g = torch.Generator(device="cuda").manual_seed(rows)
    prefix = (torch.randn(rows, prefix_cols + 8, device="cuda", generator=g) * 3)[:, 8:]
    prefix = prefix.to(torch.bfloat16)
    x = (torch.randn(rows, cols, device="cuda", generator=g) * 3).to(torch.bfloat16)
    inverse = torch.rand(rows, device="cuda", generator=g) * 40 + 10
    codes = gq.cat_gelu_quant_triton(prefix, x, inverse).float()
    ref = gq.cat_gelu_quant_reference(prefix, x, inverse).float()
    assert ((codes - ref).abs() / ref.abs().clamp_min(2**-6)).max() <= 0.125
    assert (codes != ref).float().mean() < 0.01


@pytest.mark.parametrize("text,image,heads,dim", [(512, 4096, 24, 128), (5, 33, 3, 64)])
def test_norm_rope_e4m3_codes_match_reference(text, image, heads, dim):
    """FLUX's attention prologue at FLUX-1024's double-stream shape and a masked one."""
    from tests.kernels.test_rope_quant import flux_inputs
    from trdq.kernels import triton_rope_quant as rq

    args = [a.cuda().to(torch.bfloat16) if i < 2 else (a.cuda() if torch.is_tensor(a) else a)
            for i, a in enumerate(flux_inputs(batch=1, text=text, image=image, heads=heads,
                                              dim=dim))]
    codes = rq.norm_rope_e4m3_triton(*args, 1e-6).float()
    ref = rq.norm_rope_e4m3_reference(*args, 1e-6).float()
    assert ((codes - ref).abs() / ref.abs().clamp_min(2**-6)).max() <= 0.125
    assert (codes != ref).float().mean() < 0.01


@pytest.mark.parametrize("compiled", [False, True])
def test_fused_flux_mlps_match_unfused_on_cuda_fp8(compiled):
    """FLUX's double-stream feed-forwards and single-stream proj_out inputs through the
    Triton kernels, eager and compiled, against diffusers' forward on the same layers."""
    from tests.integrations.family_helpers import IMAGE_CALL, PROMPTS, fast_family
    from trdq.nn.fused_mlp import fuse_mlps
    from trdq.testing.tiny_families import tiny_flux_pipeline

    pipe = tiny_flux_pipeline().to("cuda", torch.bfloat16)
    report = api.quantize(pipe, fast_family("fp8-norot"), backend="cuda_fp8", progress=False,
                          calibration_prompts=TINY_PROMPTS)
    assert report.backend == "cuda_fp8"
    call = {**IMAGE_CALL, "num_inference_steps": 3, "output_type": "latent"}

    def latents():
        with torch.inference_mode():
            return pipe(PROMPTS[:1], generator=torch.Generator().manual_seed(5), **call)[0]

    unfused = latents()
    assert fuse_mlps(pipe.transformer) > 0
    if compiled:
        pipe.transformer.compile()
    assert psnr_db(unfused.float(), latents().float()) > 30.0


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("family,fuse_qkv,gelu", [
    ("pixart", False, False), ("pixart", True, False), ("pixart", True, True),
    ("latte", True, True),
])
def test_fused_blocks_match_unfused_on_cuda_fp8(compiled, family, fuse_qkv, gelu):
    factory, run = ((tiny_pixart_pipeline, run_image) if family == "pixart"
                    else (tiny_latte_pipeline, run_video))
    pipe = factory().to("cuda", torch.bfloat16)
    if fuse_qkv:  # the self-attention's entry is fused too
        assert fuse_qkv_projections(pipe.transformer) > 0
    report = api.quantize(pipe, fast("fp8-norot"), progress=False, calibration_prompts=TINY_PROMPTS,
                          backend="cuda_fp8")
    assert report.backend == "cuda_fp8"
    unfused = run(pipe, TINY_PROMPTS[:2], steps=3)
    assert fuse_block_norms(pipe.transformer, gelu=gelu) > 0
    if compiled:
        pipe.transformer.compile()
    fused = run(pipe, TINY_PROMPTS[:2], steps=3)
    assert psnr_db(unfused.float(), fused.float()) > 30.0

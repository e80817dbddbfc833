"""TRDQ_FUSED_BLOCK: the quantized blocks' fused LayerNorm/GELU entries in the served
denoiser (trdq/nn/fused_block.py); auto fuses on CUDA only. On the CPU the fused forward
runs its reference path, so a served model with it gives the images of one without."""

from __future__ import annotations

import torch

from server.engine.models import load_models
from server.metrics import Metrics
from tests.helpers.serving import make_settings_with_video
from trdq.primitives import psnr_db


def _served(tmp_path, quant: str, fused_block: str):
    settings = make_settings_with_video(tmp_path, quant=quant, video_model="none",
                                        warmup=False, fuse_qkv="1", fused_block=fused_block)
    return load_models(settings, Metrics(), torch.device("cpu")).all()[0]


def test_fused_blocks_serve_images_as_close_to_full_precision_as_unfused_ones(tmp_path):
    fused = _served(tmp_path / "fused", "fp8-norot", "1")
    plain = _served(tmp_path / "plain", "fp8-norot", "auto")
    full = _served(tmp_path / "fp", "fp", "1")
    assert fused.info["fused_blocks"] > 0
    assert plain.info["fused_blocks"] == 0  # auto: CUDA only
    assert full.info["fused_blocks"] == 0  # nothing quantized, nothing to fuse
    kwargs = {"num_inference_steps": 4, "output_type": "pt", "guidance_scale": 4.5,
              "height": fused.default_height, "width": fused.default_width,
              "use_resolution_binning": False, "clean_caption": False}
    fused_image, plain_image, fp_image = (
        m.pipe("a red circle", generator=torch.Generator().manual_seed(0), **kwargs).images.float()
        for m in (fused, plain, full)
    )
    # The same e4m3 codes but for rounding order (tests/nn/test_fused_block.py); on the zoo
    # model fp8-norot itself sits ~24 dB from full precision at 4 steps (CPU, fp32), and
    # the two roundings land on either side of it (fused 26.4 dB, unfused 24.0 dB).
    assert psnr_db(fused_image, fp_image) > psnr_db(plain_image, fp_image) - 1.5
    assert psnr_db(fused_image, plain_image) > 20


def test_auto_fuses_the_flux_feed_forwards_on_cuda_only():
    """TRDQ_FUSED_BLOCK=auto on a CUDA worker gives FLUX's feed-forwards and single blocks
    their GELU + quantizer kernels (timed on an H100: docs/bench/flux-dev-1024-fusions-h100
    .json); on the CPU nothing changes. The device is only read, so a CPU model stands in."""
    from types import SimpleNamespace

    from server.engine.models import _fuse_blocks
    from tests.integrations.family_helpers import fast_family
    from trdq import api
    from trdq.testing.tiny import TINY_PROMPTS
    from trdq.testing.tiny_families import tiny_flux_pipeline

    pipe = tiny_flux_pipeline()
    api.quantize(pipe, fast_family("fp8-norot"), backend="reference", progress=False,
                 calibration_prompts=TINY_PROMPTS)
    on_cpu, on_cuda = SimpleNamespace(pipe=pipe, info={}), SimpleNamespace(pipe=pipe, info={})
    _fuse_blocks(on_cpu, "auto", torch.device("cpu"))
    assert on_cpu.info == {"fused_blocks": 0, "fused_mlps": 0, "fused_attention_prologues": 0}
    _fuse_blocks(on_cuda, "auto", torch.device("cuda"))
    assert on_cuda.info["fused_mlps"] == 6  # two double blocks x (image, text), two single
    assert on_cuda.info["fused_blocks"] == 0  # the double-stream entries: only with "1"
    assert on_cuda.info["fused_attention_prologues"] == 0  # SDPA: no static FP8 attention


def test_an_explicit_setting_also_fuses_the_flux_double_stream_entries():
    """TRDQ_FUSED_BLOCK=1: the double-stream blocks' LayerNorm entries too (not yet timed on
    a GPU, so not under auto); on the CPU their reference path."""
    from types import SimpleNamespace

    from server.engine.models import _fuse_blocks
    from tests.integrations.family_helpers import fast_family
    from trdq import api
    from trdq.testing.tiny import TINY_PROMPTS
    from trdq.testing.tiny_families import tiny_flux_pipeline

    pipe = tiny_flux_pipeline()
    api.quantize(pipe, fast_family("fp8-norot"), backend="reference", progress=False,
                 calibration_prompts=TINY_PROMPTS)
    model = SimpleNamespace(pipe=pipe, info={})
    _fuse_blocks(model, True, torch.device("cpu"))
    assert model.info["fused_blocks"] == 2 and model.info["fused_mlps"] == 6

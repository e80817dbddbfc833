"""The image VAE's decoder compiles in place (channels-last) and uncompiles for the bench.

TRDQ_COMPILE and the bench's compile rows both go through ``compile_vae_decoder``; the
bench's next row must start from the eager VAE, so ``uncompile_vae_decoder`` is its exact
inverse. Video VAEs (frame loops) are left eager on purpose.
"""

from __future__ import annotations

import torch

from trdq.runtime.compile import compile_vae_decoder, uncompile_vae_decoder
from trdq.testing.tiny import tiny_pixart_pipeline


def test_compiled_decoder_matches_eager_and_uncompiles():
    vae = tiny_pixart_pipeline().vae
    latents = torch.randn(1, vae.config.latent_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        eager = vae.decode(latents).sample
    assert compile_vae_decoder(vae)
    assert vae.decoder._compiled_call_impl is not None
    assert vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        compiled = vae.decode(latents).sample
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)
    uncompile_vae_decoder(vae)
    assert vae.decoder._compiled_call_impl is None
    assert vae.decoder.conv_in.weight.is_contiguous()
    torch._dynamo.reset()


def test_video_vaes_stay_eager():
    class AutoencoderKLWan(torch.nn.Module):  # the class name is what decides
        decoder = torch.nn.Identity()

    vae = AutoencoderKLWan()
    assert not compile_vae_decoder(vae)
    assert vae.decoder._compiled_call_impl is None

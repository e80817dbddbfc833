"""The image VAE's decoder and the text encoders' layers compile in place and uncompile.

TRDQ_COMPILE and the bench's compile rows both go through ``compile_vae_decoder``; the
bench's next row must start from the eager VAE, so ``uncompile_vae_decoder`` is its exact
inverse. Video VAEs (frame loops) are left eager on purpose.
"""

from __future__ import annotations

import torch

from trdq.runtime.compile import (
    compile_text_encoders,
    compile_vae_decoder,
    uncompile_text_encoders,
    uncompile_vae_decoder,
)
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


def test_text_encoder_layers_compile_in_place_and_match_eager():
    from transformers import T5EncoderModel

    pipe = tiny_pixart_pipeline()
    config = pipe.text_encoder.config.to_dict() | {"num_layers": 2}  # a list of two blocks
    pipe.text_encoder = T5EncoderModel(type(pipe.text_encoder.config)(**config)).eval()
    ids = torch.tensor([[3, 4, 5, 1, 0, 0]])
    with torch.inference_mode():
        eager = pipe.text_encoder(ids).last_hidden_state
    assert compile_text_encoders(pipe) == 2
    with torch.inference_mode():
        compiled = pipe.text_encoder(ids).last_hidden_state
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)
    uncompile_text_encoders(pipe)
    assert all(block._compiled_call_impl is None for block in pipe.text_encoder.encoder.block)
    torch._dynamo.reset()

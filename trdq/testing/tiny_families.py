"""Tiny random Flux, SD3 and Wan2.1 pipelines for tests (nothing is downloaded).

Shaped after diffusers' own ``get_dummy_components`` of these pipelines, with the
real latent layouts (16 latent channels; Flux packs 2x2 patches into 64 input channels)
and word-level tokenizers built in memory (``trdq.testing.tiny``) instead of hub ones:
CLIP tokenizers pad to 77 tokens as CLIP's position table expects, T5/UMT5 ones to 16
(pass ``max_sequence_length=16`` to the pipelines; the calibration does it by itself,
``trdq.integrations.pipeline_args``). Widths are multiples of 32 so block-Hadamard
rotation applies; every builder is seeded.

Sizes to call them with: Flux and SD3 ``height=width=32`` (latent 16 x 16 -> 64 image
tokens after Flux's 2x2 packing / SD3's patch 2), Wan ``height=width=32, num_frames=5``
(latent 2 x 4 x 4 -> 8 video tokens after patch 1x2x2).
"""

from __future__ import annotations

import torch

from trdq.testing.tiny import TINY_WORDS, _seeded

__all__ = [
    "T5_MAX_LENGTH",
    "tiny_flux_pipeline",
    "tiny_sd3_pipeline",
    "tiny_wan_pipeline",
    "word_tokenizer",
]

#: token length of the tiny T5/UMT5 tokenizers (the pipelines' ``max_sequence_length``)
T5_MAX_LENGTH = 16
CLIP_MAX_LENGTH = 77
TEXT_DIM = 32
LATENT_CHANNELS = 16


def word_tokenizer(max_length: int, bos: bool = False):
    """A word-level fast tokenizer; ``bos`` adds CLIP's start/end token ids layout
    (``<|startoftext|>`` = 0, ``<|endoftext|>`` = 1 doubling as padding)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    if bos:
        specials = {"<|startoftext|>": 0, "<|endoftext|>": 1, "<unk>": 2}
        pad, eos = "<|endoftext|>", "<|endoftext|>"
    else:
        specials = {"<pad>": 0, "</s>": 1, "<unk>": 2}
        pad, eos = "<pad>", "</s>"
    vocab = dict(specials)
    for word in TINY_WORDS:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = Whitespace()
    extra = {"bos_token": "<|startoftext|>"} if bos else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=pad, eos_token=eos, unk_token="<unk>",
        model_max_length=max_length, **extra,
    )


def _clip(seed: int, projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=TEXT_DIM,
        intermediate_size=64, num_attention_heads=2, num_hidden_layers=2, vocab_size=64,
        max_position_embeddings=CLIP_MAX_LENGTH, projection_dim=TEXT_DIM, hidden_act="gelu",
    )
    state = _seeded(seed)
    try:
        model = (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg)
    finally:
        torch.random.set_rng_state(state)
    return model.eval()


def _t5(seed: int, d_model: int, umt5: bool = False):
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    config_cls = UMT5Config if umt5 else T5Config
    cfg = config_cls(
        vocab_size=64, d_model=d_model, d_kv=16, d_ff=2 * d_model, num_layers=1, num_heads=2,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
        feed_forward_proj="gated-gelu",
    )
    state = _seeded(seed)
    try:
        # each encoder class takes its own config class (UMT5Config is no T5Config)
        model = UMT5EncoderModel(cfg) if isinstance(cfg, UMT5Config) else T5EncoderModel(cfg)
    finally:
        torch.random.set_rng_state(state)
    return model.eval()


def _image_vae(seed: int, shift_factor: float | None):
    """An AutoencoderKL with 16 latent channels and 2x spatial downsampling."""
    from diffusers import AutoencoderKL

    state = _seeded(seed)
    try:
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS,
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=8, sample_size=32,
            use_quant_conv=False, use_post_quant_conv=False,
            shift_factor=shift_factor, scaling_factor=1.5,
        )
    finally:
        torch.random.set_rng_state(state)
    return vae.eval()


def _flow_scheduler(**kwargs):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(**kwargs)


def tiny_flux_pipeline(seed: int = 0, hidden: int = 64, double_layers: int = 2,
                       single_layers: int = 2, guidance_embeds: bool = True):
    """FluxPipeline (FLUX.1-dev layout: guidance-distilled, no CFG batch); 32 x 32 images."""
    from diffusers import FluxPipeline, FluxTransformer2DModel

    heads = 2
    head_dim = hidden // heads
    state = _seeded(seed)
    try:
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=4 * LATENT_CHANNELS, num_layers=double_layers,
            num_single_layers=single_layers, attention_head_dim=head_dim,
            num_attention_heads=heads, joint_attention_dim=TEXT_DIM * 2,
            pooled_projection_dim=TEXT_DIM, guidance_embeds=guidance_embeds,
            axes_dims_rope=(head_dim // 4, 3 * head_dim // 8, 3 * head_dim // 8),
        ).eval()
    finally:
        torch.random.set_rng_state(state)
    pipe = FluxPipeline(
        scheduler=_flow_scheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                  max_shift=1.15, base_image_seq_len=64, max_image_seq_len=256),
        vae=_image_vae(seed, shift_factor=0.1),
        text_encoder=_clip(seed, projection=False),
        tokenizer=word_tokenizer(CLIP_MAX_LENGTH, bos=True),
        text_encoder_2=_t5(seed, TEXT_DIM * 2),
        tokenizer_2=word_tokenizer(T5_MAX_LENGTH),
        transformer=transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sd3_pipeline(seed: int = 0, hidden: int = 64, layers: int = 2):
    """StableDiffusion3Pipeline (SD3.5 layout: CFG batch [uncond, cond]); 32 x 32 images."""
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    heads = 2
    state = _seeded(seed)
    try:
        transformer = SD3Transformer2DModel(
            sample_size=16, patch_size=2, in_channels=LATENT_CHANNELS, num_layers=layers,
            attention_head_dim=hidden // heads, num_attention_heads=heads,
            joint_attention_dim=TEXT_DIM * 2, caption_projection_dim=hidden,
            pooled_projection_dim=TEXT_DIM * 2, out_channels=LATENT_CHANNELS,
            pos_embed_max_size=16, qk_norm="rms_norm",
        ).eval()
    finally:
        torch.random.set_rng_state(state)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=_flow_scheduler(shift=3.0),
        vae=_image_vae(seed, shift_factor=0.06),
        text_encoder=_clip(seed, projection=True),
        tokenizer=word_tokenizer(CLIP_MAX_LENGTH, bos=True),
        text_encoder_2=_clip(seed + 1, projection=True),
        tokenizer_2=word_tokenizer(CLIP_MAX_LENGTH, bos=True),
        text_encoder_3=_t5(seed, TEXT_DIM * 2),
        tokenizer_3=word_tokenizer(T5_MAX_LENGTH),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_wan_pipeline(seed: int = 0, hidden: int = 64, layers: int = 2):
    """WanPipeline (Wan2.1 T2V layout: CFG as two calls per step, cond then uncond);
    32 x 32 videos of 4k+1 frames."""
    from diffusers import AutoencoderKLWan, WanPipeline, WanTransformer3DModel

    heads = 2
    state = _seeded(seed)
    try:
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=hidden // heads,
            in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, text_dim=TEXT_DIM,
            freq_dim=32, ffn_dim=2 * hidden, num_layers=layers, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
        ).eval()
        vae = AutoencoderKLWan(
            base_dim=8, z_dim=LATENT_CHANNELS, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
            temperal_downsample=[False, True, True],
        ).eval()
    finally:
        torch.random.set_rng_state(state)
    pipe = WanPipeline(
        tokenizer=word_tokenizer(T5_MAX_LENGTH),
        text_encoder=_t5(seed, TEXT_DIM, umt5=True),
        vae=vae,
        scheduler=_flow_scheduler(shift=3.0),
        transformer=transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe

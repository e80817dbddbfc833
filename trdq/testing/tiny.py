"""Tiny random diffusers models and pipelines for tests (nothing is downloaded).

Everything is seeded so two builds give identical weights. Widths are multiples of 32
so block-Hadamard rotation applies (block = largest power of two dividing K).
"""

from __future__ import annotations

import torch

__all__ = [
    "TINY_PROMPTS",
    "plant_outlier_channels",
    "tiny_latte_pipeline",
    "tiny_latte_transformer",
    "tiny_pixart_pipeline",
    "tiny_pixart_transformer",
    "tiny_text_encoder",
    "tiny_tokenizer",
    "tiny_vae",
]

TEXT_DIM = 32
TINY_WORDS = ["a", "red", "green", "blue", "yellow", "circle", "square", "triangle", "star", "top", "bottom", "left", "right", "center", "small", "large", "big", "moving", "up", "down", "on", "the", "in", "of", "and", "with", "background", "black", "white"]
TINY_PROMPTS = [
    "a red circle top left",
    "a blue square bottom right",
    "a green triangle in the center",
    "a small yellow star on black background",
    "a large white circle moving left",
    "a red square and a blue circle",
]


def _seeded(seed: int):
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    return gen_state


def tiny_pixart_transformer(seed: int = 0, hidden: int = 64, layers: int = 2, sample_size: int = 8):
    from diffusers import PixArtTransformer2DModel

    state = _seeded(seed)
    try:
        heads = 2
        model = PixArtTransformer2DModel(
            num_attention_heads=heads,
            attention_head_dim=hidden // heads,
            in_channels=4,
            out_channels=8,
            num_layers=layers,
            cross_attention_dim=hidden,
            sample_size=sample_size,
            patch_size=2,
            norm_num_groups=32,
            caption_channels=TEXT_DIM,
            use_additional_conditions=False,
        )
    finally:
        torch.random.set_rng_state(state)
    return model.eval()


def tiny_latte_transformer(
    seed: int = 0, hidden: int = 64, layers: int = 2, sample_size: int = 8, video_length: int = 4
):
    from diffusers import LatteTransformer3DModel

    state = _seeded(seed)
    try:
        heads = 2
        model = LatteTransformer3DModel(
            num_attention_heads=heads,
            attention_head_dim=hidden // heads,
            in_channels=4,
            out_channels=8,
            num_layers=layers,
            cross_attention_dim=hidden,
            sample_size=sample_size,
            patch_size=2,
            activation_fn="gelu-approximate",
            num_embeds_ada_norm=1000,
            norm_type="ada_norm_single",
            norm_elementwise_affine=False,
            norm_eps=1e-6,
            caption_channels=TEXT_DIM,
            video_length=video_length,
        )
    finally:
        torch.random.set_rng_state(state)
    return model.eval()


def tiny_tokenizer():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for word in TINY_WORDS:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
        model_max_length=16,
    )


def tiny_text_encoder(seed: int = 0):
    from transformers import T5Config, T5EncoderModel

    state = _seeded(seed)
    try:
        cfg = T5Config(
            vocab_size=64, d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=1, num_heads=2,
            relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
        )
        model = T5EncoderModel(cfg)
    finally:
        torch.random.set_rng_state(state)
    return model.eval()


def tiny_vae(seed: int = 0):
    from diffusers import AutoencoderKL

    state = _seeded(seed)
    try:
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=8, sample_size=16,
        )
    finally:
        torch.random.set_rng_state(state)
    return vae.eval()


def plant_outlier_channels(transformer, channels: int = 3, gain: float = 20.0, seed: int = 0):
    """Give a few hidden channels a large adaLN scale in every block, as trained DiTs have
    (the outlier channels rotation is meant to spread). Returns the planted indices."""
    gen = torch.Generator().manual_seed(seed)
    blocks = list(getattr(transformer, "transformer_blocks", [])) + list(
        getattr(transformer, "temporal_transformer_blocks", [])
    )
    width = blocks[0].scale_shift_table.shape[-1]
    idx = torch.randperm(width, generator=gen)[:channels]
    with torch.no_grad():
        for block in blocks:
            table = block.scale_shift_table  # rows: shift/scale/gate msa, shift/scale/gate mlp
            table[1, idx] = gain
            table[4, idx] = gain
    return idx


def _scheduler():
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(num_train_timesteps=1000)


def tiny_pixart_pipeline(seed: int = 0, hidden: int = 64, layers: int = 2, outliers: bool = False):
    """PixArtAlphaPipeline producing 16x16 images (latent 8x8). Call it with
    ``height=16, width=16, use_resolution_binning=False, clean_caption=False``."""
    from diffusers import PixArtAlphaPipeline

    pipe = PixArtAlphaPipeline(
        tokenizer=tiny_tokenizer(),
        text_encoder=tiny_text_encoder(seed),
        vae=tiny_vae(seed),
        transformer=tiny_pixart_transformer(seed, hidden=hidden, layers=layers),
        scheduler=_scheduler(),
    )
    if outliers:
        plant_outlier_channels(pipe.transformer, seed=seed)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_latte_pipeline(
    seed: int = 0, hidden: int = 64, layers: int = 2, video_length: int = 4, outliers: bool = False
):
    """LattePipeline producing ``video_length`` frames of 16x16. Call it with
    ``height=16, width=16, video_length=video_length, clean_caption=False``."""
    from diffusers import LattePipeline

    pipe = LattePipeline(
        tokenizer=tiny_tokenizer(),
        text_encoder=tiny_text_encoder(seed),
        vae=tiny_vae(seed),
        transformer=tiny_latte_transformer(seed, hidden=hidden, layers=layers,
                                           video_length=video_length),
        scheduler=_scheduler(),
    )
    if outliers:
        plant_outlier_channels(pipe.transformer, seed=seed)
    pipe.set_progress_bar_config(disable=True)
    return pipe

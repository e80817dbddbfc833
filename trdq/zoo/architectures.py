"""The architectures of the embedded zoo pipelines, in one place.

Both the seed builder (`trdq.zoo.build`) and the trainer construct their models from
these configs, so a trained checkpoint always matches what the builder would make.
Sizes are chosen so the whole zoo stays well under 40 MB in fp16 and one default
generation fits the CPU budgets (image <= 3 s, 16-frame video <= 15 s on 2 cores).
"""

from __future__ import annotations

from typing import Any

#: Default generation settings per zoo pipeline (the server's defaults come from here).
T2I_RESOLUTION = 128
T2V_RESOLUTION = 64
T2V_FRAMES = 16

#: Number of tokens the tokenizer pads to (PixArt/Latte pipelines' max_sequence_length).
MAX_SEQUENCE_LENGTH = 120

#: Keyword arguments of transformers' ``T5Config`` (the vocabulary size is the tokenizer's).
TEXT_ENCODER: dict[str, Any] = {
    "d_model": 128,
    "d_kv": 32,
    "d_ff": 512,
    "num_layers": 2,
    "num_heads": 4,
    "relative_attention_num_buckets": 8,
    "relative_attention_max_distance": 32,
    "dropout_rate": 0.0,
    "feed_forward_proj": "gated-gelu",
    "is_encoder_decoder": False,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "decoder_start_token_id": 0,
}

VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (32, 64, 64, 64),
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 16,
    "scaling_factor": 1.0,
}

#: What the image and video denoisers share: a PixArt-style DiT block, 4 heads x 64.
_DIT_BLOCK = {
    "in_channels": 4,
    "out_channels": 8,  # epsilon + (unused) learned-sigma channels, as the pipelines expect
    "num_attention_heads": 4,
    "attention_head_dim": 64,
    "cross_attention_dim": 256,
    "caption_channels": TEXT_ENCODER["d_model"],
    "attention_bias": True,
    "activation_fn": "gelu-approximate",
    "num_embeds_ada_norm": 1000,
    "norm_type": "ada_norm_single",
    "norm_elementwise_affine": False,
    "norm_eps": 1e-6,
}


def t2i_transformer(patch_size: int) -> dict:
    """The PixArt DiT config at `patch_size` (2 or 1; the blocks are the same either way).

    Position embeddings keep the coordinates of the patch-2 token grid whatever the patch
    size (``interpolation_scale = 2 / patch_size``: patch 1 tokens sit at 0, 0.5, 1, ...), so
    blocks trained at patch 2 carry over to patch 1 (`trdq.tools.zoo_training.repatch`).
    """
    return dict(
        _DIT_BLOCK,
        patch_size=patch_size,
        sample_size=T2I_RESOLUTION // 8,
        num_layers=4,
        use_additional_conditions=False,
        interpolation_scale=2 // patch_size,
    )


def t2v_transformer(patch_size: int) -> dict:
    """The Latte DiT config at `patch_size` (Latte derives its position scale itself)."""
    return dict(
        _DIT_BLOCK,
        patch_size=patch_size,
        sample_size=T2V_RESOLUTION // 8,
        num_layers=3,
        video_length=T2V_FRAMES,
    )


#: Patch 2 (8x8 tokens per image, 4x4 per video frame). Patch 1 (`--t2i-patch-size 1`,
#: warm-started by `trdq.tools.zoo_training.repatch`) fits the CPU budgets (0.9 s image, 4 s video)
#: but trained ~3x slower per step and was behind patch 2 at equal GPU time (NOTES.md, run 5).
T2I_PATCH_SIZE = 2
T2V_PATCH_SIZE = 2
T2I_TRANSFORMER = t2i_transformer(T2I_PATCH_SIZE)
T2V_TRANSFORMER = t2v_transformer(T2V_PATCH_SIZE)

#: DDPM-style linear betas shared by training and sampling; DPM-Solver samples with them.
SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "prediction_type": "epsilon",
}

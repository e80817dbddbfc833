"""``trdq bench`` presets of the modern families, published architectures, random weights.

- ``flux-dev-1024``: FLUX.1-dev (19 double-stream + 38 single-stream blocks, 24 heads x
  128, joint attention dim 4096, pooled 768, guidance embedding), CLIP-L + T5-XXL (512
  tokens), the 16-channel Flux VAE; 28 flow-matching steps, guidance 3.5 (distilled: an
  embedding input, no CFG batch), 1024 x 1024 -> 4096 packed image tokens.
- ``sd35-large-1024``: SD3.5-large (38 joint blocks, 38 heads x 64, caption projection
  2432, pooled 2048, qk RMSNorm), CLIP-L + CLIP-G + T5-XXL (77 + 256 = 333 text tokens),
  the 16-channel SD3 VAE; 28 steps, CFG 3.5 (one [uncond, cond] batch of 2 rows).
- ``wan21-1.3b-480p`` / ``wan21-14b-480p``: Wan2.1 T2V (dim 1536 / 5120, 30 / 40 layers,
  12 / 40 heads x 128, ffn 8960 / 13824), UMT5-XXL (512 tokens: WanPipeline's
  ``max_sequence_length`` default), the Wan VAE; 81 frames of 480 x 832 -> latent
  21 x 60 x 104 -> 32760 tokens; 50 UniPC flow steps, CFG 5.0 as two one-branch calls per
  step, so a denoiser step here is ONE branch (batch B). The 14B preset holds ~28.6 GB of
  bf16 DiT weights plus ~11.4 GB of UMT5-XXL: run it on the H200 when an 80 GB H100 is
  short (e.g. rows keeping two copies of the denoiser).

``guidance_scale`` of these presets says whether a denoiser step is a CFG batch (what
``trdq.tools.bench`` reads to set ``cfg_override``): 1.0 for Flux and Wan, whose pipelines
never batch the branches; the value the pipeline is called with is ``pipeline_guidance``.
``step_inputs`` builds exactly what each pipeline passes its denoiser (Flux: packed
latents, ``timestep / 1000``, ``guidance``, image/text position ids), sized from the
transformer's own config, so the tests check it on scaled-down configs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["FAMILY_PRESETS", "TRANSFORMER_CONFIGS", "FamilySpec", "scaled_down"]

T5_XXL = {"vocab_size": 32128, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24,
          "num_heads": 64, "feed_forward_proj": "gated-gelu"}
UMT5_XXL = {**T5_XXL, "vocab_size": 256384}
CLIP_L = {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072,
          "num_hidden_layers": 12, "num_attention_heads": 12, "projection_dim": 768,
          "hidden_act": "quick_gelu"}
CLIP_G = {"vocab_size": 49408, "hidden_size": 1280, "intermediate_size": 5120,
          "num_hidden_layers": 32, "num_attention_heads": 20, "projection_dim": 1280,
          "hidden_act": "gelu"}

TRANSFORMER_CONFIGS: dict[str, dict[str, Any]] = {
    "flux-dev": {"patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38,
                 "attention_head_dim": 128, "num_attention_heads": 24,
                 "joint_attention_dim": 4096, "pooled_projection_dim": 768,
                 "guidance_embeds": True, "axes_dims_rope": (16, 56, 56)},
    "sd35-large": {"sample_size": 128, "patch_size": 2, "in_channels": 16, "num_layers": 38,
                   "attention_head_dim": 64, "num_attention_heads": 38,
                   "joint_attention_dim": 4096, "caption_projection_dim": 2432,
                   "pooled_projection_dim": 2048, "out_channels": 16,
                   "pos_embed_max_size": 192, "qk_norm": "rms_norm"},
    "wan21-1.3b": {"patch_size": (1, 2, 2), "num_attention_heads": 12, "attention_head_dim": 128,
                   "in_channels": 16, "out_channels": 16, "text_dim": 4096, "freq_dim": 256,
                   "ffn_dim": 8960, "num_layers": 30, "cross_attn_norm": True,
                   "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "rope_max_seq_len": 1024},
}
TRANSFORMER_CONFIGS["wan21-14b"] = {**TRANSFORMER_CONFIGS["wan21-1.3b"],
                                    "num_attention_heads": 40, "ffn_dim": 13824, "num_layers": 40}


def scaled_down(config: dict[str, Any]) -> dict[str, Any]:
    """The same architecture at test size: 1 block (of each kind), 2 heads, narrow text."""
    small = dict(config)
    for key, value in (("num_layers", 1), ("num_single_layers", 1), ("num_attention_heads", 2),
                       ("joint_attention_dim", 64), ("text_dim", 64), ("pooled_projection_dim", 32),
                       ("ffn_dim", 64)):
        if key in small:
            small[key] = value
    if "caption_projection_dim" in small:
        small["caption_projection_dim"] = 2 * small["attention_head_dim"]
    return small


@dataclass(frozen=True)
class FamilySpec:
    """What a family's bench preset needs beyond ``BenchPreset``'s fields."""

    family: str  # flux | sd3 | wan
    transformer: str  # key of TRANSFORMER_CONFIGS
    max_sequence_length: int
    pipeline_guidance: float


def _vae_2d(scaling: float, shift: float):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32,
        sample_size=1024, scaling_factor=scaling, shift_factor=shift,
        use_quant_conv=False, use_post_quant_conv=False,
    ).eval()


def _clip(cfg: dict[str, Any], projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, **cfg)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()


def _t5(cfg: dict[str, Any], umt5: bool = False):
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    # two branches, not a (config class, model class) pair: mypy checks each pairing
    if umt5:
        return UMT5EncoderModel(UMT5Config(pad_token_id=0, eos_token_id=1, **cfg)).eval()
    return T5EncoderModel(T5Config(pad_token_id=0, eos_token_id=1, **cfg)).eval()


def build_family_pipeline(spec: FamilySpec, device: torch.device, dtype: torch.dtype):
    import diffusers

    from trdq.testing.tiny_families import word_tokenizer
    from trdq.tools.bench_presets import _build_on

    tcfg = TRANSFORMER_CONFIGS[spec.transformer]
    t5_tok = word_tokenizer(spec.max_sequence_length)
    with _build_on(device, dtype):
        if spec.family == "flux":
            parts = {"transformer": diffusers.FluxTransformer2DModel(**tcfg).eval(),
                     "vae": _vae_2d(0.3611, 0.1159), "text_encoder": _clip(CLIP_L, False),
                     "text_encoder_2": _t5(T5_XXL)}
        elif spec.family == "sd3":
            parts = {"transformer": diffusers.SD3Transformer2DModel(**tcfg).eval(),
                     "vae": _vae_2d(1.5305, 0.0609), "text_encoder": _clip(CLIP_L, True),
                     "text_encoder_2": _clip(CLIP_G, True), "text_encoder_3": _t5(T5_XXL)}
        else:
            parts = {"transformer": diffusers.WanTransformer3DModel(**tcfg).eval(),
                     "vae": diffusers.AutoencoderKLWan().eval(),
                     "text_encoder": _t5(UMT5_XXL, umt5=True)}
    if spec.family == "flux":
        pipe = diffusers.FluxPipeline(
            scheduler=diffusers.FlowMatchEulerDiscreteScheduler(
                shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                base_image_seq_len=256, max_image_seq_len=4096),
            tokenizer=word_tokenizer(77, bos=True), tokenizer_2=t5_tok, **parts)
    elif spec.family == "sd3":
        pipe = diffusers.StableDiffusion3Pipeline(
            scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
            tokenizer=word_tokenizer(77, bos=True), tokenizer_2=word_tokenizer(77, bos=True),
            tokenizer_3=t5_tok, **parts)
    else:
        pipe = diffusers.WanPipeline(
            scheduler=diffusers.UniPCMultistepScheduler(
                prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0,
                num_train_timesteps=1000),
            tokenizer=t5_tok, **parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def family_call_kwargs(preset, spec: FamilySpec, batch: int) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "prompt": ["a red circle top left"] * batch,
        "num_inference_steps": preset.steps,
        "guidance_scale": spec.pipeline_guidance,
        "height": preset.height,
        "width": preset.width,
        "max_sequence_length": spec.max_sequence_length,
        "output_type": "pt",
    }
    if preset.frames is not None:
        kw["num_frames"] = preset.frames
    return kw


def family_step_inputs(preset, spec: FamilySpec, transformer, batch: int, device,
                       dtype) -> dict[str, Any]:
    """One denoiser call as the family's pipeline makes it (shapes from ``transformer``)."""
    cfg = transformer.config
    g = torch.Generator(device="cpu").manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=g).to(device, dtype)

    lh, lw = preset.height // 8, preset.width // 8  # all three VAEs downsample 8x
    if spec.family == "flux":
        ph, pw = lh // 2, lw // 2  # 2 x 2 latents packed into one token
        ids = torch.zeros(ph, pw, 3)
        ids[..., 1] += torch.arange(ph)[:, None]
        ids[..., 2] += torch.arange(pw)[None, :]
        kw: dict[str, Any] = {
            "hidden_states": randn(batch, ph * pw, cfg.in_channels),
            "encoder_hidden_states": randn(batch, preset.text_len, cfg.joint_attention_dim),
            "pooled_projections": randn(batch, cfg.pooled_projection_dim),
            "timestep": torch.full((batch,), 0.5, device=device, dtype=dtype),  # t / 1000
            "img_ids": ids.reshape(-1, 3).to(device, dtype),
            "txt_ids": torch.zeros(preset.text_len, 3, device=device, dtype=dtype),
            "guidance": (torch.full((batch,), spec.pipeline_guidance, device=device,
                                    dtype=torch.float32) if cfg.guidance_embeds else None),
        }
    elif spec.family == "sd3":
        rows = 2 * batch if preset.guidance_scale > 1 else batch
        kw = {
            "hidden_states": randn(rows, cfg.in_channels, lh, lw),
            "encoder_hidden_states": randn(rows, preset.text_len, cfg.joint_attention_dim),
            "pooled_projections": randn(rows, cfg.pooled_projection_dim),
            "timestep": torch.full((rows,), 500.0, device=device),
        }
    else:
        frames = (preset.frames - 1) // 4 + 1  # the Wan VAE: 4x in time, first frame alone
        kw = {
            "hidden_states": randn(batch, cfg.in_channels, frames, lh, lw),
            "encoder_hidden_states": randn(batch, preset.text_len, cfg.text_dim),
            "timestep": torch.full((batch,), 500.0, device=device),
        }
    kw["return_dict"] = False
    return kw


#: preset name -> (spec, BenchPreset fields)
_FAMILY_PRESETS: dict[str, tuple[FamilySpec, dict[str, Any]]] = {
    "flux-dev-1024": (FamilySpec("flux", "flux-dev", 512, 3.5), {
        "height": 1024, "width": 1024, "steps": 28, "guidance_scale": 1.0, "text_len": 512,
        "batches": (1, 4), "calib_hw": (512, 512),
        "notes": [("FLUX.1-dev architecture (19 + 38 blocks, 24 x 128), CLIP-L + T5-XXL, "
                  "Flux VAE, random weights; guidance 3.5 distilled (no CFG batch)")]}),
    "sd35-large-1024": (FamilySpec("sd3", "sd35-large", 256, 3.5), {
        "height": 1024, "width": 1024, "steps": 28, "guidance_scale": 3.5,
        "text_len": 77 + 256, "batches": (1, 4), "calib_hw": (512, 512),
        "notes": [("SD3.5-large architecture (38 blocks, 38 x 64), CLIP-L + CLIP-G + T5-XXL, "
                  "SD3 VAE, random weights; CFG 3.5 as one 2-row batch")]}),
    "wan21-1.3b-480p": (FamilySpec("wan", "wan21-1.3b", 512, 5.0), {
        "height": 480, "width": 832, "frames": 81, "steps": 50, "guidance_scale": 1.0,
        "text_len": 512, "scopes": ("denoiser_step",), "calib_hw": (240, 416),
        "notes": [("Wan2.1-T2V-1.3B architecture, UMT5-XXL, Wan VAE, random weights; 81 frames "
                  "480x832; a step is one CFG branch (WanPipeline calls cond and uncond apart)")]}),
    "wan21-14b-480p": (FamilySpec("wan", "wan21-14b", 512, 5.0), {
        "height": 480, "width": 832, "frames": 81, "steps": 50, "guidance_scale": 1.0,
        "text_len": 512, "scopes": ("denoiser_step",), "calib_hw": (240, 416),
        "notes": [("Wan2.1-T2V-14B architecture, UMT5-XXL, Wan VAE, random weights; 81 frames "
                  "480x832; one CFG branch per step; ~40 GB bf16 weights (H200 if short)")]}),
}


def _make(name: str):
    from trdq.tools.bench_presets import BenchPreset

    spec, fields = _FAMILY_PRESETS[name]

    class FamilyBenchPreset(BenchPreset):
        def call_kwargs(self, batch: int) -> dict[str, Any]:
            return family_call_kwargs(self, spec, batch)

        def step_inputs(self, transformer, batch: int, device, dtype) -> dict[str, Any]:
            return family_step_inputs(self, spec, transformer, batch, device, dtype)

    preset = FamilyBenchPreset(
        name=name, build=lambda d, t: build_family_pipeline(spec, d, t), **fields)
    preset.spec = spec  # type: ignore[attr-defined]  # for tests and reports
    return preset


FAMILY_PRESETS = {name: (lambda n=name: _make(n)) for name in _FAMILY_PRESETS}

"""Models for ``trdq bench``: each preset builds a diffusers pipeline and says how to call it.

Random-weight presets reproduce the published architectures (nothing is downloaded):
- ``pixart-alpha-1024``: PixArt-XL-2-1024-MS (28 blocks, hidden 1152 = 16 x 72), T5-XXL
  encoder (d_model 4096, 24 layers, d_ff 10240, 64 heads), SD VAE; 20 DPM-Solver steps,
  CFG 4.5, 1024 x 1024.
- ``latte-512-16f``: Latte-1 (28 spatial + temporal blocks, hidden 1152), 16 frames of
  512 x 512, T5-XXL, SD VAE.
- ``cpu-small``: a PixArt-style DiT large enough for INT8 to matter on 2 CPU cores
  (12 blocks, hidden 768, 256 image tokens), tiny T5 and VAE.
- ``flux-dev-1024``, ``sd35-large-1024``, ``wan21-1.3b-480p``, ``wan21-14b-480p``: FLUX.1-dev,
  SD3.5-large and Wan2.1 T2V, in ``trdq.tools.bench_family_presets``.
Any other name is loaded with ``trdq.pipeline.load_pipeline`` (zoo name or local folder).
Models are built directly on the target device in the target dtype (no fp32 detour).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["PRESET_NAMES", "BenchPreset", "get_preset"]


@contextlib.contextmanager
def _build_on(device: torch.device, dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def _word_tokenizer(max_length: int):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    words = [
        "a",
        "red",
        "green",
        "blue",
        "yellow",
        "purple",
        "orange",
        "circle",
        "square",
        "triangle",
        "star",
        "top",
        "bottom",
        "left",
        "right",
        "center",
        "small",
        "large",
        "moving",
        "photo",
        "of",
        "cat",
        "on",
        "the",
        "in",
        "at",
    ]
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=max_length,
    )


def _t5(d_model: int, layers: int, d_ff: int, heads: int, d_kv: int):
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(
        vocab_size=32128,
        d_model=d_model,
        d_kv=d_kv,
        d_ff=d_ff,
        num_layers=layers,
        num_heads=heads,
        feed_forward_proj="gated-gelu",
        pad_token_id=0,
        eos_token_id=1,
    )
    return T5EncoderModel(cfg).eval()


def _sd_vae(small: bool = False):
    from diffusers import AutoencoderKL

    channels = (32, 64, 64, 64) if small else (128, 256, 512, 512)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=channels,
        layers_per_block=2,
        norm_num_groups=32,
        sample_size=512,
        scaling_factor=0.18215,
    ).eval()


def _dit_kwargs(
    hidden_heads: int, head_dim: int, layers: int, sample_size: int, caption_channels: int
) -> dict[str, Any]:
    return {
        "num_attention_heads": hidden_heads,
        "attention_head_dim": head_dim,
        "in_channels": 4,
        "out_channels": 8,
        "num_layers": layers,
        "dropout": 0.0,
        "norm_num_groups": 32,
        "cross_attention_dim": hidden_heads * head_dim,
        "attention_bias": True,
        "sample_size": sample_size,
        "patch_size": 2,
        "activation_fn": "gelu-approximate",
        "num_embeds_ada_norm": 1000,
        "norm_type": "ada_norm_single",
        "norm_elementwise_affine": False,
        "norm_eps": 1e-6,
        "caption_channels": caption_channels,
    }


def _pixart_pipeline(
    device, dtype, *, heads, head_dim, layers, sample_size, t5, small_vae, max_length
):
    from diffusers import DPMSolverMultistepScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel

    with _build_on(device, dtype):
        text_encoder = _t5(*t5)
        transformer = PixArtTransformer2DModel(
            **_dit_kwargs(heads, head_dim, layers, sample_size, t5[0])
        ).eval()
        vae = _sd_vae(small_vae)
    pipe = PixArtAlphaPipeline(
        tokenizer=_word_tokenizer(max_length),
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=DPMSolverMultistepScheduler(num_train_timesteps=1000),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _latte_pipeline(device, dtype, *, frames):
    from diffusers import DPMSolverMultistepScheduler, LattePipeline, LatteTransformer3DModel

    with _build_on(device, dtype):
        text_encoder = _t5(4096, 24, 10240, 64, 64)
        kw = _dit_kwargs(16, 72, 28, 64, 4096)
        kw.pop("norm_num_groups")
        transformer = LatteTransformer3DModel(video_length=frames, **kw).eval()
        vae = _sd_vae()
    pipe = LattePipeline(
        tokenizer=_word_tokenizer(120),
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer,
        scheduler=DPMSolverMultistepScheduler(num_train_timesteps=1000),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@dataclass
class BenchPreset:
    name: str
    build: Callable[[torch.device, torch.dtype], Any]
    height: int
    width: int
    steps: int = 20
    guidance_scale: float = 4.5
    text_len: int = 120
    frames: int | None = None
    batches: tuple[int, ...] = (1,)
    scopes: tuple[str, ...] = ("pipeline", "denoiser_step")
    #: calibration resolution for quantize() (smaller than serving to save bench time)
    calib_hw: tuple[int, int] | None = None
    notes: list[str] = field(default_factory=list)

    def call_kwargs(self, batch: int) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "prompt": ["a red circle top left"] * batch,
            "num_inference_steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "height": self.height,
            "width": self.width,
            "clean_caption": False,
            "output_type": "pt",
        }
        if self.frames is not None:
            kw["video_length"] = self.frames
        else:
            kw["use_resolution_binning"] = False
        return kw

    def step_inputs(self, transformer, batch: int, device, dtype) -> dict[str, Any]:
        """One CFG denoiser call: [uncond x B, cond x B] rows, as the pipeline makes it."""
        rows = 2 * batch if self.guidance_scale > 1 else batch
        lh, lw = self.height // 8, self.width // 8
        shape = (rows, 4, self.frames, lh, lw) if self.frames else (rows, 4, lh, lw)
        g = torch.Generator(device="cpu").manual_seed(0)
        caption_dim = transformer.config.caption_channels
        kw: dict[str, Any] = {
            "hidden_states": torch.randn(shape, generator=g).to(device, dtype),
            "encoder_hidden_states": torch.randn(rows, self.text_len, caption_dim, generator=g).to(
                device, dtype
            ),
            "encoder_attention_mask": torch.ones(rows, self.text_len, device=device),
            "timestep": torch.full((rows,), 500.0, device=device),
            "return_dict": False,
        }
        if self.frames is not None:
            # LattePipeline passes no text mask (the model repeats the text per frame)
            kw.pop("encoder_attention_mask")
            kw["enable_temporal_attentions"] = True
        else:
            extra = None
            if getattr(transformer, "use_additional_conditions", False):
                extra = {
                    "resolution": torch.tensor(
                        [[self.height, self.width]] * rows, device=device, dtype=dtype
                    ),
                    "aspect_ratio": torch.ones(rows, 1, device=device, dtype=dtype),
                }
            kw["added_cond_kwargs"] = (
                extra if extra is not None else {"resolution": None, "aspect_ratio": None}
            )
        return kw


def _zoo_preset(name: str) -> BenchPreset:
    def build(device, dtype):
        from trdq.pipeline import load_pipeline

        pipe = load_pipeline(name, device=device, dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    # the real size is read from the loaded pipeline in bench_runner.py (resolve_zoo_geometry)
    return BenchPreset(
        name=name,
        build=build,
        height=0,
        width=0,
        text_len=0,
        batches=(1, 4),
        notes=[f"zoo pipeline {name}"],
    )


def resolve_zoo_geometry(preset: BenchPreset, pipe) -> None:
    """Fill height/width/frames/text length of a zoo preset from the pipeline itself."""
    if preset.height:
        return
    cfg = pipe.transformer.config
    scale = getattr(pipe, "vae_scale_factor", 8)
    preset.height = preset.width = int(cfg.sample_size) * scale
    if hasattr(cfg, "video_length") and type(pipe).__name__ == "LattePipeline":
        preset.frames = int(cfg.video_length)
    preset.text_len = int(getattr(pipe.tokenizer, "model_max_length", 16) or 16)
    preset.text_len = min(preset.text_len, 120)


_T5_XXL = (4096, 24, 10240, 64, 64)

PRESETS: dict[str, Callable[[], BenchPreset]] = {
    "pixart-alpha-1024": lambda: BenchPreset(
        name="pixart-alpha-1024",
        build=lambda d, t: _pixart_pipeline(
            d,
            t,
            heads=16,
            head_dim=72,
            layers=28,
            sample_size=128,
            t5=_T5_XXL,
            small_vae=False,
            max_length=120,
        ),
        height=1024,
        width=1024,
        batches=(1, 4),
        calib_hw=(512, 512),
        notes=["PixArt-XL-2-1024-MS architecture, T5-XXL, SD VAE, random weights"],
    ),
    "latte-512-16f": lambda: BenchPreset(
        name="latte-512-16f",
        build=lambda d, t: _latte_pipeline(d, t, frames=16),
        height=512,
        width=512,
        frames=16,
        scopes=("denoiser_step",),
        calib_hw=(256, 256),
        notes=["Latte-1 architecture, 16 frames 512x512, random weights"],
    ),
    "cpu-small": lambda: BenchPreset(
        name="cpu-small",
        build=lambda d, t: _pixart_pipeline(
            d,
            t,
            heads=12,
            head_dim=64,
            layers=12,
            sample_size=32,
            t5=(256, 2, 512, 4, 64),
            small_vae=True,
            max_length=32,
        ),
        height=256,
        width=256,
        steps=10,
        text_len=32,
        batches=(1,),
        calib_hw=(256, 256),
        notes=["PixArt-style DiT, 12 blocks, hidden 768, 256 tokens, tiny T5/VAE, 10 steps"],
    ),
}


def _tiny(device, dtype):
    from trdq.testing.tiny import tiny_pixart_pipeline

    return tiny_pixart_pipeline(outliers=True).to(device, dtype)


#: a seconds-long preset for tests of the harness itself (not a benchmark)
PRESETS["tiny-test"] = lambda: BenchPreset(
    name="tiny-test",
    build=_tiny,
    height=16,
    width=16,
    steps=4,
    text_len=16,
    batches=(1,),
    calib_hw=(16, 16),
    notes=["harness self-test on the tiny random PixArt"],
)


def _register_families() -> None:
    # imported here: the family module subclasses BenchPreset lazily, inside its builders
    from trdq.tools.bench_family_presets import FAMILY_PRESETS

    PRESETS.update(FAMILY_PRESETS)


_register_families()
PRESET_NAMES = tuple(PRESETS)


def get_preset(name: str) -> BenchPreset:
    if name in PRESETS:
        return PRESETS[name]()
    return _zoo_preset(name)

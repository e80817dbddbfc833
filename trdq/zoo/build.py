"""Build the embedded zoo pipelines from a fixed seed (random weights).

Until the trained weights land (see `trdq zoo train`), this is how the folders under
`trdq/zoo/models/` are made: `python -m trdq.zoo.build` (or `make zoo`). The output is
a plain diffusers folder per pipeline, loadable with `from_pretrained`, with weights in
fp16 safetensors to keep the package small.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from trdq.zoo import architectures as arch
from trdq.zoo.registry import ZOO_DIR
from trdq.zoo.tokenizer import build_tokenizer

logger = logging.getLogger(__name__)


def build_components(seed: int) -> dict:
    """Shared parts of both zoo pipelines: text encoder, tokenizer, VAE, scheduler."""
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler
    from transformers import T5Config, T5EncoderModel

    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    text_config = T5Config(vocab_size=len(tokenizer), **arch.TEXT_ENCODER)
    text_encoder = T5EncoderModel(text_config).eval()
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(**arch.VAE).eval()
    scheduler = DPMSolverMultistepScheduler(**arch.SCHEDULER)
    return {"tokenizer": tokenizer, "text_encoder": text_encoder, "vae": vae, "scheduler": scheduler}


def build_t2i(seed: int = 0):
    """A PixArt-alpha-style text-to-image pipeline with random weights."""
    from diffusers import PixArtAlphaPipeline, PixArtTransformer2DModel

    parts = build_components(seed)
    torch.manual_seed(seed + 2)
    transformer = PixArtTransformer2DModel(**arch.T2I_TRANSFORMER).eval()
    return PixArtAlphaPipeline(transformer=transformer, **parts)


def build_t2v(seed: int = 0):
    """A Latte-style text-to-video pipeline with random weights."""
    from diffusers import LattePipeline, LatteTransformer3DModel

    parts = build_components(seed)
    torch.manual_seed(seed + 3)
    transformer = LatteTransformer3DModel(**arch.T2V_TRANSFORMER).eval()
    return LattePipeline(transformer=transformer, **parts)


BUILDERS = {"tiny-shapes-t2i": build_t2i, "tiny-shapes-t2v": build_t2v}


def save_pipeline(pipe, out_dir: Path) -> None:
    """Save as a diffusers folder with fp16 safetensors (halves the package size)."""
    pipe.to(torch.float16)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    pipe.to(torch.float32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ZOO_DIR)
    parser.add_argument("names", nargs="*", default=sorted(BUILDERS))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    for name in args.names:
        pipe = BUILDERS[name](args.seed)
        save_pipeline(pipe, args.out / name)
        logger.info("wrote %s", args.out / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

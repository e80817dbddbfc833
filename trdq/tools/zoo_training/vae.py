"""Stage 1: the AutoencoderKL on rendered shapes (128x128 images and 64x64 video frames).

Loss: L1 + MSE on pixels in [-1, 1] plus a tiny KL (the latents only need to be smooth
enough for diffusion; shapes are simple, so reconstructions get close to exact). After
training, `scaling_factor` is set to 1 / std of the latent means, so the diffusion models
see unit-variance latents, and the pipelines divide by it before decoding.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from trdq.tools.zoo_training.data import to_unit_range
from trdq.tools.zoo_training.loop import Budget, Meter, autocast, set_lr

if TYPE_CHECKING:
    from trdq.data.split import Kind

logger = logging.getLogger(__name__)


@dataclass
class VAEConfig:
    steps: int = 3000
    seconds: float = 70.0
    image_batch: int = 24
    frame_batch: int = 128
    lr: float = 1e-3
    kl_weight: float = 1e-6
    log_every: int = 200
    eval_batch: int = 64


def _batch(pixels: np.ndarray, count: int, rng: np.random.Generator, device) -> torch.Tensor:
    """A random batch of frames (videos are sampled frame by frame) as [-1, 1] NCHW."""
    if pixels.ndim == 5:
        clips = rng.integers(len(pixels), size=count)
        frames = rng.integers(pixels.shape[1], size=count)
        chosen = pixels[clips, frames]
    else:
        chosen = pixels[rng.integers(len(pixels), size=count)]
    return to_unit_range(torch.from_numpy(chosen).to(device, non_blocking=True))


def _loss(vae, x: torch.Tensor, kl_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    posterior = vae.encode(x).latent_dist
    recon = vae.decode(posterior.sample()).sample.float()
    pixel = F.l1_loss(recon, x) + F.mse_loss(recon, x)
    kl = posterior.kl().mean() / x[0].numel()
    return pixel + kl_weight * kl, pixel


def train_vae(
    vae, images: np.ndarray, frames: np.ndarray, config: VAEConfig, device, seed: int
) -> dict:
    """Train in place; returns a summary (steps, final losses, reconstruction PSNR)."""
    rng = np.random.default_rng(seed)
    vae.train().to(device)
    optimizer = torch.optim.AdamW(
        vae.parameters(), lr=config.lr, weight_decay=0.0, betas=(0.9, 0.99)
    )
    base_lrs = [config.lr]
    budget = Budget(config.steps, config.seconds, warmup_steps=100)
    meter, step, last = Meter(), 0, float("nan")
    while not budget.done(step):
        set_lr(optimizer, base_lrs, budget.lr_factor(step))
        x_img = _batch(images, config.image_batch, rng, device)
        x_frm = _batch(frames, config.frame_batch, rng, device)
        with autocast(device):
            loss_img, pix_img = _loss(vae, x_img, config.kl_weight)
            loss_frm, pix_frm = _loss(vae, x_frm, config.kl_weight)
        loss = loss_img + 2.0 * loss_frm  # 64 px frames are the harder case (small shapes)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        meter.add(0.5 * (pix_img + pix_frm))
        step += 1
        if step % config.log_every == 0 or budget.done(step):
            last = meter.pop()
            logger.info("vae step %d  pixel loss %.5f  (%.0f s)", step, last, budget.elapsed())
    vae.eval()
    summary = {"steps": step, "seconds": round(budget.elapsed(), 1), "final_pixel_loss": last}
    summary.update(reconstruction_psnr(vae, images, frames, device, seed + 1, config.eval_batch))
    return summary


@dataclass
class DecoderConfig:
    """Decoder-only fine-tuning: the encoder (so the latent space the DiTs were trained on)
    is frozen; only `post_quant_conv` and the decoder learn."""

    steps: int = 20000
    seconds: float = 150.0
    image_batch: int = 32
    frame_batch: int = 256
    lr: float = 2e-4
    #: extra loss weight on shape pixels (and a 1-pixel ring around them): a small shape
    #: covers ~2% of a 64 px frame, so a plain mean lets the background drown its edges
    foreground_weight: float = 9.0
    log_every: int = 200
    eval_batch: int = 64


def foreground_weights(x: torch.Tensor, extra: float) -> torch.Tensor:
    """Per-pixel loss weights (N, 1, H, W): 1 on the background, 1 + `extra` on the shape
    and its edge ring. The background is the frame's corner colour (renders keep shapes
    off the border)."""
    background = x[:, :, :1, :1]
    mask = ((x - background).abs().amax(dim=1, keepdim=True) > 0.05).float()
    mask = F.max_pool2d(mask, kernel_size=3, stride=1, padding=1)
    return 1.0 + extra * mask


def _decoder_loss(vae, x: torch.Tensor, extra: float) -> torch.Tensor:
    with torch.no_grad():
        latents = vae.encode(x).latent_dist.sample()
    recon = vae.decode(latents).sample.float()
    weights = foreground_weights(x, extra)
    error = (recon - x).abs() + (recon - x).square()
    return (error * weights).sum() / (weights.sum() * x.shape[1])


def finetune_decoder(
    vae, images: np.ndarray, frames: np.ndarray, config: DecoderConfig, device, seed: int
) -> dict:
    """Sharpen the decoder in place on posterior samples of the frozen encoder.

    Why: the 64 px video frames lose small shapes in the VAE (the evaluator read only 66%
    of held-out ground-truth videos right after a round trip), which capped the video
    model below the target however well the DiT learned. Retraining the whole VAE would
    move the latent space and throw the DiTs away; the decoder alone can be sharpened.
    """
    rng = np.random.default_rng(seed)
    vae.to(device).train()
    vae.requires_grad_(False)
    params = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    for param in params:
        param.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0, betas=(0.9, 0.99))
    budget = Budget(config.steps, config.seconds, warmup_steps=100)
    meter, step, last = Meter(), 0, float("nan")
    while not budget.done(step):
        set_lr(optimizer, [config.lr], budget.lr_factor(step))
        x_img = _batch(images, config.image_batch, rng, device)
        x_frm = _batch(frames, config.frame_batch, rng, device)
        with autocast(device):
            loss = _decoder_loss(vae, x_img, config.foreground_weight)
            loss = loss + 2.0 * _decoder_loss(vae, x_frm, config.foreground_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        meter.add(loss.detach() / 3.0)
        step += 1
        if step % config.log_every == 0 or budget.done(step):
            last = meter.pop()
            logger.info("decoder step %d  weighted loss %.5f  (%.0f s)", step, last, budget.elapsed())
    vae.eval().requires_grad_(False)
    summary = {
        "steps": step,
        "seconds": round(budget.elapsed(), 1),
        "final_weighted_loss": last,
        "foreground_weight": config.foreground_weight,
        "lr": config.lr,
    }
    summary.update(reconstruction_psnr(vae, images, frames, device, seed + 1, config.eval_batch))
    return summary


@torch.no_grad()
def reconstruction_psnr(
    vae, images: np.ndarray, frames: np.ndarray, device, seed: int, count: int = 64
) -> dict:
    rng = np.random.default_rng(seed)
    result = {}
    for name, pixels in (("image", images), ("frame", frames)):
        x = _batch(pixels, count, rng, device)
        recon = vae.decode(vae.encode(x).latent_dist.mode()).sample.float().clamp(-1, 1)
        mse = F.mse_loss((recon + 1) / 2, (x + 1) / 2)
        result[f"{name}_psnr_db"] = round(float(-10 * torch.log10(mse)), 2)
    logger.info("vae reconstruction PSNR: %s", result)
    return result


@torch.no_grad()
def encode_latents(vae, pixels: np.ndarray, device, batch: int = 512) -> torch.Tensor:
    """Latent means of every frame: (N, 4, h, w) for images, (N, 4, T, h, w) for videos."""
    is_video = pixels.ndim == 5
    flat = pixels.reshape((-1,) + pixels.shape[-3:])
    chunks = []
    for start in range(0, len(flat), batch):
        x = to_unit_range(torch.from_numpy(flat[start : start + batch]).to(device))
        with autocast(device):
            chunks.append(vae.encode(x).latent_dist.mode().float())
    latents = torch.cat(chunks)
    if is_video:
        n, t = pixels.shape[:2]
        latents = latents.view(n, t, *latents.shape[1:]).permute(0, 2, 1, 3, 4).contiguous()
    return latents


def latent_scaling_factor(latents: torch.Tensor) -> float:
    """1 / std of the latents, as diffusers' `scaling_factor` convention expects."""
    return float(1.0 / latents.float().std())


def reconstruction_accuracy(
    vae, device, workers: int = 1, images: int = 100, videos: int = 50
) -> dict:
    """Evaluator accuracy on VAE reconstructions of held-out renders: the ceiling that the
    diffusion models can reach through this VAE."""
    from trdq.data import heldout_prompts, render_image, render_video
    from trdq.tools.zoo_training.evaluate import score_samples
    from trdq.zoo import architectures as arch

    result = {}
    counts: tuple[tuple[Kind, int], ...] = (("image", images), ("video", videos))
    for kind, count in counts:
        prompts = heldout_prompts(count, 1, kind)
        if kind == "image":
            pixels = np.stack([render_image(p, arch.T2I_RESOLUTION) for p in prompts])
        else:
            pixels = np.stack(
                [render_video(p, arch.T2V_FRAMES, arch.T2V_RESOLUTION) for p in prompts]
            )
        flat = pixels.reshape((-1,) + pixels.shape[-3:])
        with torch.no_grad():
            x = to_unit_range(torch.from_numpy(flat).to(device))
            recon = vae.decode(vae.encode(x).latent_dist.mode()).sample.float().clamp(-1, 1)
        recon = (
            ((recon + 1) * 127.5 + 0.5)
            .byte()
            .permute(0, 2, 3, 1)
            .cpu()
            .numpy()
            .reshape(pixels.shape)
        )
        accuracy, per_attribute = score_samples(list(recon), prompts, workers)
        result[kind] = {
            "accuracy": round(accuracy, 4),
            "per_attribute": {k: round(v, 4) for k, v in per_attribute.items()},
        }
    logger.info("evaluator on VAE reconstructions of held-out renders: %s", result)
    return result

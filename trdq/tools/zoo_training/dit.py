"""Stages 2 and 3: the PixArt DiT (with the T5 encoder, jointly) and the Latte DiT (T5 frozen).

Epsilon-prediction DDPM objective on the first 4 output channels (the pipelines read the
epsilon from there; channels 4..7 would be a learned variance, which these pipelines
ignore), with each sample's squared error weighted by (1 / alpha_bar_t) ** 0.5 (see
`loss_weight`). Plain epsilon MSE barely rewards knowing the layout at high noise (at
t=999 a wrong x0 costs alpha_bar / (1 - alpha_bar) ~ 4e-5 of its error), and a first run
showed exactly that: low loss, good denoising at t < 500, garbage layouts from pure noise.
The full v-prediction weight 1 / alpha_bar_t (runs 2-5) fixed the layout but starved the
low- and mid-noise steps that draw the shape; the square root balances both (run 6). The DiTs train in
fp32 with TF32 matmuls rather than bf16: at t ~ 999 the x0 signal in the epsilon output
is ~0.6% of its magnitude, near bf16's resolution, and these tiny models are bound by
launch overhead, so fp32 costs little. Caption dropout replaces the text by the empty prompt encoded exactly as the
pipelines encode `negative_prompt=""`, so classifier-free guidance has a trained
unconditional branch.

How each pipeline feeds text to its denoiser (diffusers 0.42), mirrored here:

- PixArtAlphaPipeline: T5 over 120 tokens with the tokenizer's attention mask, and the
  same mask as `encoder_attention_mask` of the DiT; the negative "" is "</s>" + pads with
  mask [1, 0, ...]. Training pads to 32 tokens instead of 120: pad positions are masked in
  both T5 and the DiT, so nothing else changes.
- LattePipeline (mask_feature=True): no mask reaches the DiT. With one prompt the
  embeddings are cut to the prompt's k valid tokens and the negative to the first k rows
  of the unmasked "" encoding; with several prompts the prompt embeddings are zeroed at
  pad positions (120 rows) and the negative is all 120 rows of the "" encoding. Both
  forms are trained (half of each batch), the first as an additive key mask over 120 rows,
  which is the same attention as the cut sequence.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass

import torch

from trdq.tools.zoo_training.data import TokenTable
from trdq.tools.zoo_training.loop import EMA, Budget, Meter, NoiseSchedule, autocast, set_lr
from trdq.zoo.architectures import MAX_SEQUENCE_LENGTH

logger = logging.getLogger(__name__)

#: Additive attention bias for a masked key (diffusers' own convention).
MASKED_KEY_BIAS = -10000.0


@dataclass
class DiTConfig:
    steps: int = 20000
    seconds: float = 200.0
    batch: int = 256
    lr: float = 3e-4
    text_lr: float = 1e-4
    weight_decay: float = 0.01
    ema_decay: float = 0.999
    full_caption_prob: float = 0.7
    caption_dropout: float = 0.1
    warmup_steps: int = 300
    log_every: int = 500
    checkpoint_seconds: float = 60.0
    bf16: bool = False
    #: sample weight (1 / alpha_bar_t) ** power: 1 is the v-prediction loss; 0.5 gives every
    #: timestep the same gradient per unit of v error (see `loss_weight`)
    loss_weight_power: float = 0.5
    #: stop the stage when a logged loss exceeds this multiple of the best one so far and
    #: keep the EMA weights of the last good log point (0 turns the guard off); see `_Trainer`
    divergence_factor: float = 1.5


def _pick_tokens(
    tokens: TokenTable, idx: torch.Tensor, config: DiTConfig
) -> tuple[torch.Tensor, ...]:
    """Token ids/masks of a random caption variant per sample, and the dropout flags."""
    batch, device = idx.shape[0], idx.device
    variants = tokens.ids.shape[1]
    partial = torch.randint(1, variants, (batch,), device=device)
    use_full = torch.rand(batch, device=device) < config.full_caption_prob
    variant = torch.where(use_full, torch.zeros_like(partial), partial)
    ids, mask = tokens.ids[idx, variant], tokens.mask[idx, variant]
    drop = torch.rand(batch, device=device) < config.caption_dropout
    return ids, mask, drop


def _epsilon_loss(
    prediction: torch.Tensor, noise: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """Per-sample epsilon MSE times `weight` (1 / alpha_bar_t), averaged over the batch."""
    channels = noise.shape[1]
    error = (prediction[:, :channels].float() - noise.float()).pow(2).flatten(1).mean(dim=1)
    return (error * weight).mean()


def loss_weight(schedule: NoiseSchedule, t: torch.Tensor, config: DiTConfig) -> torch.Tensor:
    """Per-sample weight of the epsilon MSE: (1 / alpha_bar_t) ** `config.loss_weight_power`.

    With power 1 (the v loss) the gradient on the epsilon output is 2 dv / sqrt(alpha_bar):
    a sample at t=999 pushes ~150x harder than one at t=200 for the same v error, so the
    low- and mid-noise denoising that draws the shape learns far slower than the layout
    (run 5: started from a render noised to t=400, the run-4 model kept only 58% of the
    shapes). Power 0.5 makes that gradient 2 dv at every t, as a v-predicting network's is.
    """
    return schedule.v_weight[t] ** config.loss_weight_power


def _amp(device, config: DiTConfig):
    return autocast(device) if config.bf16 else contextlib.nullcontext()


class _Trainer:
    """Optimizer + EMA + budget + logging + periodic checkpoint around a loss closure."""

    def __init__(self, name, groups, ema_modules, config: DiTConfig, on_checkpoint=None):
        self.name, self.config = name, config
        fused = all(p.is_cuda for group in groups for p in group["params"])
        self.optimizer = torch.optim.AdamW(
            groups, betas=(0.9, 0.999), weight_decay=config.weight_decay, fused=fused or None
        )
        self.base_lrs = [group["lr"] for group in groups]
        self.emas = [EMA(module, config.ema_decay) for module in ema_modules]
        self.ema_modules = ema_modules
        self.params = [p for group in groups for p in group["params"]]
        self.on_checkpoint = on_checkpoint
        # divergence guard: the EMA weights at the last log point whose loss was sane
        self.best_loss, self.good_step = float("inf"), 0
        self.good_shadows = [[s.clone() for s in ema.shadow] for ema in self.emas]

    def run(self, loss_fn) -> dict:
        config = self.config
        budget = Budget(config.steps, config.seconds, warmup_steps=config.warmup_steps)
        meter, step, history = Meter(), 0, []
        diverged_at = None
        last_checkpoint = budget.elapsed()
        while not budget.done(step):
            set_lr(self.optimizer, self.base_lrs, budget.lr_factor(step))
            loss = loss_fn()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            self.optimizer.step()
            for ema in self.emas:
                ema.update()
            meter.add(loss)
            step += 1
            if step % config.log_every == 0 or budget.done(step):
                value = meter.pop()
                history.append((step, round(value, 5)))
                logger.info(
                    "%s step %d  loss %.5f  (%.0f s)", self.name, step, value, budget.elapsed()
                )
                if self._diverged(value):
                    logger.warning(
                        "%s diverged at step %d (loss %.5f, best %.5f): keeping the EMA "
                        "weights of step %d and ending the stage",
                        self.name, step, value, self.best_loss, self.good_step,
                    )
                    self.restore_good()
                    diverged_at = step
                    break
                self.remember_good(value, step)
            if (
                self.on_checkpoint
                and budget.elapsed() - last_checkpoint > config.checkpoint_seconds
            ):
                last_checkpoint = budget.elapsed()
                self.checkpoint()
        summary = {
            "steps": step,
            "seconds": round(budget.elapsed(), 1),
            "final_loss": history[-1][1] if history else None,
            "loss_history": history,
            "batch": config.batch,
            "lr": config.lr,
            "loss_weight_power": config.loss_weight_power,
            "bf16": config.bf16,
            "diverged_at": diverged_at,
            "kept_step": self.good_step if diverged_at else step,
        }
        self.finish()
        return summary

    def _diverged(self, loss: float) -> bool:
        """A bf16 continuation of the Latte DiT blew up twice mid-run (loss 0.0093 -> 0.017 ->
        0.1 over ~5000 steps, and 0.0075 -> 0.094 within 1000; NOTES.md) and its EMA followed,
        so both runs' earlier, better weights were lost. Between log points (500-step means)
        a healthy run moved at most ~1.2x above its best; 1.5x catches the slow blow-up
        while the EMA of the last log point is still clean."""
        factor = self.config.divergence_factor
        return factor > 0 and (not math.isfinite(loss) or loss > factor * self.best_loss)

    def remember_good(self, loss: float, step: int) -> None:
        self.best_loss = min(self.best_loss, loss)
        self.good_step = step
        for ema, saved in zip(self.emas, self.good_shadows):
            torch._foreach_copy_(saved, ema.shadow)

    def restore_good(self) -> None:
        for ema, saved in zip(self.emas, self.good_shadows):
            torch._foreach_copy_(ema.shadow, saved)

    def finish(self) -> None:
        """Leave the EMA weights in the modules (what is saved and shipped)."""
        for ema in self.emas:
            ema.copy_to()
        for module in self.ema_modules:
            module.eval()

    def checkpoint(self) -> None:
        """Save EMA weights without disturbing training: swap in, save, swap back."""
        backups = [[p.detach().clone() for p in ema.params] for ema in self.emas]
        for ema in self.emas:
            ema.copy_to()
        self.on_checkpoint()
        with torch.no_grad():
            for ema, backup in zip(self.emas, backups):
                for param, saved in zip(ema.params, backup):
                    param.copy_(saved)


def train_t2i(
    transformer,
    text_encoder,
    latents,
    tokens: TokenTable,
    config: DiTConfig,
    device,
    on_checkpoint=None,
) -> dict:
    """Joint T5 + PixArt training on (caption, image latent) pairs. Latents are pre-scaled."""
    schedule = NoiseSchedule(device)
    transformer.train().to(device)
    tokens = tokens.to(device)
    groups = [{"params": list(transformer.parameters()), "lr": config.lr}]
    # text_lr 0 freezes T5, which the Latte DiT (trained on the same T5) then keeps matching
    train_text = config.text_lr > 0
    if train_text:
        text_encoder.train().requires_grad_(True).to(device)
        groups.append({"params": list(text_encoder.parameters()), "lr": config.text_lr})
    else:
        text_encoder.eval().requires_grad_(False).to(device)
    ema_modules = [transformer, text_encoder] if train_text else [transformer]
    trainer = _Trainer("t2i", groups, ema_modules, config, on_checkpoint)
    no_extra = {"resolution": None, "aspect_ratio": None}

    def loss_fn() -> torch.Tensor:
        idx = torch.randint(0, latents.shape[0], (config.batch,), device=device)
        ids, mask, drop = _pick_tokens(tokens, idx, config)
        ids = torch.where(drop[:, None], tokens.uncond_ids, ids)
        mask = torch.where(drop[:, None], tokens.uncond_mask, mask)
        x0 = latents[idx]
        noise = torch.randn_like(x0)
        t = schedule.sample_timesteps(config.batch, device)
        with _amp(device, config), torch.set_grad_enabled(train_text):
            text = text_encoder(ids, attention_mask=mask)[0]
        with _amp(device, config):
            prediction = transformer(
                schedule.add_noise(x0, noise, t),
                encoder_hidden_states=text,
                encoder_attention_mask=mask,
                timestep=t,
                added_cond_kwargs=no_extra,
                return_dict=False,
            )[0]
        return _epsilon_loss(prediction, noise, loss_weight(schedule, t, config))

    return trainer.run(loss_fn)


@torch.no_grad()
def _latte_text(text_encoder, tokens: TokenTable, idx, config: DiTConfig, frames: int):
    """Text states (B, 120, D) and key bias (B * frames, 1, 120) in either Latte form."""
    ids, mask, drop = _pick_tokens(tokens, idx, config)
    batch, device = ids.shape[0], ids.device
    states = text_encoder(ids, attention_mask=mask)[0].float() * mask[..., None]
    padded = states.new_zeros(batch, MAX_SEQUENCE_LENGTH, states.shape[-1])
    padded[:, : states.shape[1]] = states
    empty_ids = torch.zeros(1, MAX_SEQUENCE_LENGTH, dtype=ids.dtype, device=device)
    empty_mask = torch.zeros_like(empty_ids)
    empty_ids[0, : tokens.uncond_ids.shape[0]] = tokens.uncond_ids
    empty_mask[0, : tokens.uncond_mask.shape[0]] = tokens.uncond_mask
    # All 120 rows of the "" encoding, pad positions included (LattePipeline passes them on).
    negative = text_encoder(empty_ids, attention_mask=empty_mask)[0].float()
    states = torch.where(drop[:, None, None], negative.expand(batch, -1, -1), padded)
    # One-prompt form: only the prompt's k valid rows are visible (prompt or negative alike).
    cut = torch.rand(batch, device=device) < 0.5
    valid_count = mask.sum(dim=1, keepdim=True)
    positions = torch.arange(MAX_SEQUENCE_LENGTH, device=device)[None, :]
    visible = (positions < valid_count) | ~cut[:, None]
    bias = torch.zeros(batch, 1, MAX_SEQUENCE_LENGTH, device=device)
    bias.masked_fill_(~visible[:, None, :], MASKED_KEY_BIAS)
    return states, bias.repeat_interleave(frames, dim=0)


def train_t2v(
    transformer,
    text_encoder,
    latents,
    tokens: TokenTable,
    config: DiTConfig,
    device,
    on_checkpoint=None,
) -> dict:
    """Latte training on (caption, video latent) pairs with the trained T5 frozen.

    `latents` is (N, C, T, h, w), pre-scaled.
    """
    schedule = NoiseSchedule(device)
    transformer.train().to(device)
    text_encoder.eval().requires_grad_(False).to(device)
    tokens = tokens.to(device)
    groups = [{"params": list(transformer.parameters()), "lr": config.lr}]
    trainer = _Trainer("t2v", groups, [transformer], config, on_checkpoint)
    frames = latents.shape[2]

    def loss_fn() -> torch.Tensor:
        idx = torch.randint(0, latents.shape[0], (config.batch,), device=device)
        with _amp(device, config):
            states, bias = _latte_text(text_encoder, tokens, idx, config, frames)
        x0 = latents[idx]
        noise = torch.randn_like(x0)
        t = schedule.sample_timesteps(config.batch, device)
        with _amp(device, config):
            prediction = transformer(
                schedule.add_noise(x0, noise, t),
                encoder_hidden_states=states,
                encoder_attention_mask=bias,
                timestep=t,
                return_dict=False,
            )[0]
        return _epsilon_loss(prediction, noise, loss_weight(schedule, t, config))

    return trainer.run(loss_fn)

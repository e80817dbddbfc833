"""Pieces shared by the training stages: LR schedule under a step and time budget, EMA,
the DDPM forward process, and fp16 component checkpoints."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from trdq.tools.zoo_training.repatch import PATCH_WEIGHT, repatch_state
from trdq.zoo import architectures as arch

logger = logging.getLogger(__name__)


@dataclass
class Budget:
    """Stop after `max_steps` or `max_seconds`, whichever comes first.

    The LR schedule follows the same progress (the larger of the two fractions), so a
    time-capped run still ends with a fully decayed learning rate.
    """

    max_steps: int
    max_seconds: float
    warmup_steps: int = 200
    start: float = field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def progress(self, step: int) -> float:
        seconds = self.elapsed() / self.max_seconds if self.max_seconds > 0 else 0.0
        return min(1.0, max(step / self.max_steps, seconds))

    def lr_factor(self, step: int) -> float:
        """Linear warm-up, then cosine from 1 to 0.05."""
        warmup = min(1.0, (step + 1) / max(1, self.warmup_steps))
        cosine = 0.5 * (1.0 + math.cos(math.pi * self.progress(step)))
        return warmup * (0.05 + 0.95 * cosine)

    def done(self, step: int) -> bool:
        return step >= self.max_steps or self.progress(step) >= 1.0


def set_lr(optimizer: torch.optim.Optimizer, base_lrs: list[float], factor: float) -> None:
    for group, base in zip(optimizer.param_groups, base_lrs):
        group["lr"] = base * factor


class EMA:
    """Exponential moving average of parameters (fp32 shadow), with the usual warm-up
    `decay_t = min(decay, (1 + t) / (10 + t))` so early averages are not stuck at init."""

    def __init__(self, module: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.shadow = [p.detach().float().clone() for p in self.params]
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in self.params], 1.0 - decay)

    @torch.no_grad()
    def copy_to(self, module_params: list[torch.nn.Parameter] | None = None) -> None:
        for param, shadow in zip(module_params or self.params, self.shadow):
            param.copy_(shadow.to(param.dtype))


class NoiseSchedule:
    """The DDPM forward process of `architectures.SCHEDULER` (linear betas, 1000 steps),
    exactly as diffusers' schedulers build it: x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps."""

    def __init__(self, device: torch.device) -> None:
        config = arch.SCHEDULER
        betas = torch.linspace(
            config["beta_start"],
            config["beta_end"],
            config["num_train_timesteps"],
            dtype=torch.float32,
        )
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0).to(device)
        self.num_steps = config["num_train_timesteps"]
        self.sqrt_ab = alphas_cumprod.sqrt()
        self.sqrt_one_minus_ab = (1.0 - alphas_cumprod).sqrt()
        #: 1 / alpha_bar_t turns an epsilon MSE into the v-prediction MSE (x0 weight SNR + 1).
        self.v_weight = 1.0 / alphas_cumprod

    def sample_timesteps(self, batch: int, device: torch.device) -> torch.Tensor:
        return torch.randint(0, self.num_steps, (batch,), device=device)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        shape = (-1,) + (1,) * (x0.dim() - 1)
        return self.sqrt_ab[t].view(shape) * x0 + self.sqrt_one_minus_ab[t].view(shape) * noise


def autocast(device: torch.device):
    """bf16 autocast on CUDA; fp32 elsewhere (the CPU smoke path stays simple and exact)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def save_component(module: torch.nn.Module, path: Path) -> None:
    """fp16 safetensors of a module's state dict (what ships; keeps files under 16 MiB)."""
    state = {
        k: v.detach().to("cpu", torch.float16).clone().contiguous()
        for k, v in module.state_dict().items()
    }
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp))
    tmp.replace(path)


def load_component(module: torch.nn.Module, path: Path) -> None:
    """Load a saved component; a DiT saved at a coarser patch size is repatched to the
    module's own (`trdq.tools.zoo_training.repatch`)."""
    state = load_file(str(path))
    if PATCH_WEIGHT in state:
        # a diffusers DiT: `config` is its FrozenDict (a property), not a submodule or buffer
        config: Any = module.config
        state = repatch_state(state, config.patch_size)
    dtype = next(module.parameters()).dtype
    missing, unexpected = module.load_state_dict(
        {k: v.to(dtype) for k, v in state.items()}, strict=False
    )
    if unexpected or [m for m in missing if not m.endswith("temp_pos_embed")]:
        raise ValueError(f"{path}: missing {missing}, unexpected {unexpected}")


class Meter:
    """Running mean of a loss between log lines, synchronising only when it logs."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.count = 0

    def add(self, value: torch.Tensor) -> None:
        value = value.detach().float()
        self.total = value if self.total is None else self.total + value
        self.count += 1

    def pop(self) -> float:
        mean = float(self.total / self.count) if self.total is not None else float("nan")
        self.total, self.count = None, 0
        return mean

"""Helpers shared by the quantization tests: a fast calibration recipe and tiny runs."""

from __future__ import annotations

import torch

from trdq.config import QuantConfig

IMAGE_KW = {"height": 16, "width": 16, "use_resolution_binning": False,
            "clean_caption": False, "output_type": "pt"}
VIDEO_KW = {"height": 16, "width": 16, "video_length": 4, "clean_caption": False,
            "output_type": "pt"}


def fast(config: QuantConfig | str, **changes) -> QuantConfig:
    """A preset with a small calibration (2 prompts x 6 steps) for fast tests."""
    cfg = QuantConfig.preset(config) if isinstance(config, str) else config
    base = {"calib_num_prompts": 2, "calib_batch_size": 2, "calib_steps": 6, "calib_rows": 64}
    base.update(changes)
    return cfg.replace(**base)


def run_image(pipe, prompts, steps: int = 6, guidance: float = 4.5, seed: int = 0):
    gens = [torch.Generator().manual_seed(seed + i) for i in range(len(prompts))]
    return pipe(list(prompts), generator=gens, num_inference_steps=steps,
                guidance_scale=guidance, **IMAGE_KW).images


def run_video(pipe, prompts, steps: int = 6, guidance: float = 4.5, seed: int = 0):
    gens = [torch.Generator().manual_seed(seed + i) for i in range(len(prompts))]
    return pipe(list(prompts), generator=gens, num_inference_steps=steps,
                guidance_scale=guidance, **VIDEO_KW).frames


def cfg_delta_layer(backend, *, seed: int, center: bool = True):
    """A small dynamic, CFG-delta ``QuantLinear`` (128 -> 48) on ``backend`` and a CFG batch
    for it: [uncond x 2; cond x 2], each cond row close to its uncond partner."""
    from trdq.nn import QuantLinear
    from trdq.quant_transforms import LayerQuantParams
    from trdq.timestep import QuantContext

    torch.manual_seed(seed)
    ctx = QuantContext(num_groups=1, group=0, cfg_active=True)
    params = LayerQuantParams(128, None, torch.ones(1, 2), torch.tensor([[0.9, 0.95]]))
    layer = QuantLinear.from_linear(torch.nn.Linear(128, 48), params, backend, ctx,
                                    act_mode="dynamic", act_center=center, cfg_delta=True)
    x_u = torch.randn(2, 5, 128) * 3
    return layer, torch.cat([x_u, x_u + 0.2 * torch.randn_like(x_u)])

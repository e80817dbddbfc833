"""Model cards (README.md) for the trained zoo pipelines, written from the run's metadata."""

from __future__ import annotations

import json
from pathlib import Path

from trdq.tools.zoo_training import STAGES
from trdq.zoo import architectures as arch

_DESCRIPTION = {
    "tiny-shapes-t2i": (
        "PixArtAlphaPipeline",
        "text-to-image",
        f"{arch.T2I_RESOLUTION}x{arch.T2I_RESOLUTION} images",
        "t2i",
    ),
    "tiny-shapes-t2v": (
        "LattePipeline",
        "text-to-video",
        f"{arch.T2V_FRAMES} frames of {arch.T2V_RESOLUTION}x{arch.T2V_RESOLUTION}",
        "t2v",
    ),
}


def _format_eval(result: dict | None) -> str:
    if not result:
        return "Not evaluated in this run."
    attributes = ", ".join(f"{k} {v:.1%}" for k, v in result["per_attribute"].items())
    return (
        f"Full-prompt accuracy **{result['accuracy']:.1%}** on {result['prompts']} held-out prompts "
        f"(`heldout_prompts({result['prompts']}, seed={result['prompt_seed']})`, {result['steps']} "
        f"DPM-Solver steps, CFG {result['guidance_scale']}, batch {result['batch']}, on "
        f"{result.get('device_name', result['device'])}); per attribute: {attributes}."
    )


#: Continued runs were launched on the device machine from scratch copies of the weights.
_CONTINUATION_NOTE = (
    "Each run continues from the weights the runs above it left; an `--init-from` or\n"
    "`--checkpoint-dir` under `/tmp` (or `.init`) was a scratch copy of those weights on the\n"
    "training machine: pass the previous run's `--out` (or `trdq/zoo/models`) instead.\n"
)


def _decoder_line(decoder: dict | None) -> str:
    """The decoder-only fine-tuning (stage `decoder`), when the zoo had one."""
    if not decoder:
        return ""
    video = decoder.get("heldout_reconstruction", {}).get("video", {})
    readback = (
        f"; the evaluator reads {100 * video['accuracy']:.0f}% of held-out ground-truth videos "
        "right after an encode/decode round trip"
        if "accuracy" in video
        else ""
    )
    return (
        f"- VAE decoder fine-tuned alone (encoder frozen, so the latent space the DiTs learned "
        f"stays): {decoder.get('steps', '?')} steps, L1 + MSE with {decoder.get('foreground_weight', '?')}x extra "
        f"weight on shape pixels, reconstruction PSNR {decoder.get('image_psnr_db', '?')} dB / "
        f"{decoder.get('frame_psnr_db', '?')} dB{readback}.\n"
    )


def _commands(meta: dict) -> str:
    """The run list, oldest first; a continued zoo also gets `_CONTINUATION_NOTE`."""
    history = meta.get("history", [])
    lines = []
    for run in history + [meta]:
        trained = run.get("stages", [s for s in STAGES if s in run])
        parts = [f"{stage} {run[stage]['steps']} steps" for stage in trained if stage in run]
        lines.append(f"- `{run.get('command', 'trdq zoo train')}` ({', '.join(parts)})")
    return "\n".join(lines) + ("\n\n" + _CONTINUATION_NOTE if history else "")


#: the zoo's quality targets: held-out full-prompt accuracy (issue: trained zoo)
TARGETS = {"image": 0.90, "video": 0.80}


def _status(meta: dict) -> str:
    """A warning paragraph while any evaluated pipeline misses its accuracy target."""
    scores = {result["kind"]: result["accuracy"]
              for results in meta.get("eval", {}).values() for result in results
              if result.get("batch", 0) > 1}
    missed = [f"{kind} {100 * scores[kind]:.1f}% (target {100 * target:.0f}%)"
              for kind, target in TARGETS.items() if kind in scores and scores[kind] < target]
    if not missed:
        return ""
    return (f"\n> **Status: partly trained.** Held-out full-prompt accuracy: {', '.join(missed)}; "
            "see the Evaluation section and `trdq/tools/zoo_training/NOTES.md` for the next run.\n")


def write_card(folder: Path, name: str, meta: dict, weight_bytes: int) -> None:
    pipeline_class, task, output, stage = _DESCRIPTION[name]
    # the denoiser as saved (its patch size can differ from the architectures' default)
    transformer_config = json.loads((folder / "transformer" / "config.json").read_text())
    stage_meta = meta.get(stage, {})
    vae_meta = meta.get("vae", {})
    t2i_meta = meta.get("t2i", {})
    evals = meta.get("eval", {}).get(name, [])
    eval_lines = "\n".join(f"- {_format_eval(r)}" for r in evals) or "- Not evaluated in this run."
    text_note = (
        "trained jointly with the DiT"
        if stage == "t2i"
        else "shared with tiny-shapes-t2i, frozen here"
    )
    card = f"""---
library_name: diffusers
pipeline_tag: {task}
tags: [trdq, shapes, tiny, {pipeline_class}]
---

# {name}
{_status(meta)}
A tiny {pipeline_class} ({task}, {output}) trained from scratch on the procedural
"shapes" world of `trdq.data`: one shape (circle, square, triangle, cross) of a palette
colour, size and {"grid position" if stage == "t2i" else "motion (direction, speed)"} on a
plain background, built to be the embedded default of trdq-server (no download). Weights are fp16 safetensors ({weight_bytes / 1e6:.1f} MB for this folder).

## Data

Rendered with `trdq.data.render` (anti-aliased, layout jitter) from the TRAIN split only
(`trdq.data.train_captions`): held-out attribute combinations were never rendered.
{meta.get("data", {}).get("images", "?")} images and {meta.get("data", {}).get("videos", "?")} videos;
each render has its full caption and {meta.get("data", {}).get("variants", 4) - 1} partial ones
(attributes dropped at random; the full caption is used 70% of the time). Caption dropout 10%
(empty prompt, encoded as the pipeline encodes `negative_prompt=""`) so CFG works.

## Architecture (`trdq/zoo/architectures.py`)

- Tokenizer: word-level over the grammar vocabulary (`tokenizers`, tokenizer.json).
- Text encoder: T5 encoder, d_model {arch.TEXT_ENCODER["d_model"]}, {arch.TEXT_ENCODER["num_layers"]} layers ({text_note}).
- VAE: AutoencoderKL, blocks {arch.VAE["block_out_channels"]}, {arch.VAE["latent_channels"]} latent channels,
  scaling_factor {meta.get("scaling_factor", 1.0):.4f} (1 / latent std).
- Denoiser: {transformer_config["num_layers"]} layers, {transformer_config["num_attention_heads"]} heads x
  {transformer_config["attention_head_dim"]}, patch {transformer_config["patch_size"]}, epsilon prediction on the
  first 4 of {transformer_config["out_channels"]} output channels.
- Scheduler: DPM-Solver multistep over linear betas {arch.SCHEDULER["beta_start"]}..{arch.SCHEDULER["beta_end"]},
  {arch.SCHEDULER["num_train_timesteps"]} steps.

## Training

- VAE: {vae_meta.get("steps", "?")} steps, L1 + MSE + 1e-6 KL, final pixel loss {vae_meta.get("final_pixel_loss", "?")},
  reconstruction PSNR {vae_meta.get("image_psnr_db", "?")} dB (128 px images) / {vae_meta.get("frame_psnr_db", "?")} dB (64 px frames).
{_decoder_line(meta.get("decoder"))}- Text encoder + PixArt DiT: {t2i_meta.get("steps", "?")} steps of batch {t2i_meta.get("batch", "?")}, final loss {t2i_meta.get("final_loss", "?")}.
{"- Latte DiT: " + str(stage_meta.get("steps", "?")) + " steps of batch " + str(stage_meta.get("batch", "?")) + ", final loss " + str(stage_meta.get("final_loss", "?")) + "." if stage == "t2v" else ""}
- DiT loss (last run of this DiT): epsilon MSE weighted by (1 / alpha_bar_t) ** {stage_meta.get("loss_weight_power", 1.0)}
  (see `loss_weight` in `trdq/tools/zoo_training/dit.py`). AdamW, cosine LR, EMA of weights (decay 0.999);
  VAE in bf16 autocast, this DiT {"in bf16 autocast (fp32 master weights)" if stage_meta.get("bf16") else "in fp32 with TF32 matmuls"}; seed {meta.get("seed", 0)}, on
  {meta.get("device_name", "?")}, {meta.get("total_seconds", "?")} s for the last run.

Reproduce (from the repository root{", in this order" if meta.get("history") else ""}):
{_commands(meta)}

## Evaluation (held-out combinations, analytic evaluator `trdq.eval.shapes`)

{eval_lines}
"""
    (folder / "README.md").write_text(card)


def write_meta(path: Path, meta: dict) -> None:
    path.write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")

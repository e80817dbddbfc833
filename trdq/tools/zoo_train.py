"""`trdq zoo train`: train the embedded zoo pipelines from scratch on the shapes world.

Stages (each can be selected with --stages, and resumed from saved weights with
--init-from): ``vae`` (AutoencoderKL on images and video frames), ``decoder`` (the VAE
decoder alone sharpened, encoder frozen so the latent space stays), ``t2i`` (T5 encoder +
PixArt DiT, jointly), ``t2v`` (Latte DiT, T5 frozen). Both pipelines ship the same
tokenizer, text encoder and VAE. The run writes:

- ``--out DIR``: ``DIR/tiny-shapes-t2i`` and ``DIR/tiny-shapes-t2v`` diffusers folders
  (fp16 safetensors, README.md model cards);
- ``--checkpoint-dir`` (default ``DIR/checkpoints``): one fp16 safetensors file per
  component (refreshed during training), ``meta.json`` and ``log.txt``.

``--smoke`` runs every stage for a few steps on tiny batches (CPU, < 1 minute);
``--from-weights DIR`` skips training and assembles the folders from a checkpoint dir.

Example (the GPU run that made the shipped zoo)::

    trdq zoo train --out /tmp/zoo --checkpoint-dir $OUT --device cuda --workers 16
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from trdq.tools.zoo_training import STAGES
from trdq.tools.zoo_training.card import write_card, write_meta
from trdq.tools.zoo_training.data import CAPTION_VARIANTS, build_set, tokenize_table
from trdq.tools.zoo_training.dit import DiTConfig, train_t2i, train_t2v
from trdq.tools.zoo_training.loop import load_component, save_component
from trdq.tools.zoo_training.vae import (
    DecoderConfig,
    VAEConfig,
    encode_latents,
    finetune_decoder,
    latent_scaling_factor,
    reconstruction_accuracy,
    train_vae,
)
from trdq.zoo import architectures as arch
from trdq.zoo.build import build_components, save_pipeline

logger = logging.getLogger(__name__)

T2I_NAME, T2V_NAME = "tiny-shapes-t2i", "tiny-shapes-t2v"
#: the training record (meta.json of the run) saved beside each assembled pipeline
TRAINING_META = "training.json"
COMPONENT_FILES = {
    "vae": "vae.safetensors",
    "text_encoder": "text_encoder.safetensors",
    "t2i_transformer": "t2i_transformer.safetensors",
    "t2v_transformer": "t2v_transformer.safetensors",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trdq zoo train", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="where the pipeline folders go")
    p.add_argument("--checkpoint-dir", type=Path, help="component weights, meta.json, log.txt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--workers", type=int, default=1, help="processes for rendering and scoring")
    p.add_argument("--smoke", action="store_true", help="a few steps of every stage, tiny batches")
    p.add_argument("--stages", default=",".join(STAGES), help="comma list of " + ",".join(STAGES))
    p.add_argument(
        "--init-from", type=Path, help="checkpoint dir to start from (skipped stages keep it)"
    )
    p.add_argument(
        "--from-weights", type=Path, help="no training: assemble folders from this checkpoint dir"
    )
    p.add_argument("--images-per-caption", type=int, default=4)
    p.add_argument("--videos-per-caption", type=int, default=2)
    p.add_argument("--vae-steps", type=int, default=4000)
    p.add_argument("--vae-seconds", type=float, default=110.0)
    p.add_argument("--decoder-steps", type=int, default=DecoderConfig.steps)
    p.add_argument("--decoder-seconds", type=float, default=DecoderConfig.seconds)
    p.add_argument("--t2i-steps", type=int, default=30000)
    p.add_argument("--t2i-seconds", type=float, default=180.0)
    p.add_argument("--t2i-batch", type=int, default=512)
    p.add_argument("--scenes", type=float, default=0.0,
                   help="fraction of the training images drawn as two-shape scenes (issue #25)")
    p.add_argument("--t2v-steps", type=int, default=30000)
    p.add_argument("--t2v-seconds", type=float, default=180.0)
    p.add_argument("--t2v-batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--text-lr", type=float, default=1e-4, help="T5 learning rate (t2i stage)")
    p.add_argument("--eval-images", type=int, default=0, help="held-out image prompts to score")
    p.add_argument("--eval-videos", type=int, default=0, help="held-out video prompts to score")
    p.add_argument(
        "--eval-single-videos", type=int, default=0, help="also score N one-prompt calls"
    )
    p.add_argument("--eval-steps", type=int, default=20)
    p.add_argument(
        "--t2i-patch-size", type=int, default=arch.T2I_PATCH_SIZE,
        help="PixArt patch size (weights from a coarser patch are repatched on load)",
    )
    p.add_argument("--t2v-patch-size", type=int, default=arch.T2V_PATCH_SIZE)
    p.add_argument(
        "--bf16", action="store_true",
        help="bf16 autocast for the DiT stages on CUDA (fp32 master weights and EMA)",
    )
    p.add_argument(
        "--loss-weight-power", type=float, default=0.5,
        help="DiT sample weight (1/alpha_bar)**power: 1 the v loss, 0.5 balanced gradients",
    )
    return p


def _smoke_overrides(args: argparse.Namespace) -> None:
    args.images_per_caption, args.videos_per_caption = 1, 1
    args.vae_steps = args.decoder_steps = args.t2i_steps = args.t2v_steps = 2
    args.t2i_batch, args.t2v_batch = 4, 2
    args.eval_images, args.eval_videos = min(args.eval_images, 1), min(args.eval_videos, 1)
    args.eval_single_videos = 0
    args.eval_steps = 2


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _setup_logging(checkpoint_dir: Path) -> None:
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    handlers: list[logging.Handler] = [logging.FileHandler(checkpoint_dir / "log.txt")]
    if not root.handlers:
        handlers.append(logging.StreamHandler(sys.stderr))
    for handler in handlers:
        handler.setFormatter(fmt)
        root.addHandler(handler)


def build_models(
    seed: int, t2i_patch: int = arch.T2I_PATCH_SIZE, t2v_patch: int = arch.T2V_PATCH_SIZE
) -> dict:
    """Untrained components with the seeds of `trdq.zoo.build` (same init as the seeded zoo)."""
    from diffusers import LatteTransformer3DModel, PixArtTransformer2DModel

    parts = build_components(seed)
    torch.manual_seed(seed + 2)
    parts["t2i_transformer"] = PixArtTransformer2DModel(**arch.t2i_transformer(t2i_patch))
    torch.manual_seed(seed + 3)
    parts["t2v_transformer"] = LatteTransformer3DModel(**arch.t2v_transformer(t2v_patch))
    return parts


def load_checkpoint(parts: dict, checkpoint_dir: Path, meta: dict) -> list[str]:
    """Load whichever component files exist; the VAE's scaling factor comes from meta.json."""
    loaded = []
    saved_meta = checkpoint_dir / "meta.json"
    if saved_meta.exists():
        previous = json.loads(saved_meta.read_text())
        meta.update({k: v for k, v in previous.items() if k not in ("command", "eval", "history")})
        if meta.get("command") != previous.get("command"):
            # A continued run keeps the record of the runs its weights come from: each
            # entry holds only the stages that run trained (meta carries older ones on).
            trained = previous.get("stages", STAGES)
            keys = ("command", "stages", *(s for s in STAGES if s in trained), "total_seconds")
            earlier = {k: previous[k] for k in keys if k in previous}
            meta["history"] = previous.get("history", []) + [earlier]
        else:
            meta["history"] = previous.get("history", [])
    for component, filename in COMPONENT_FILES.items():
        path = checkpoint_dir / filename
        if path.exists():
            load_component(parts[component], path)
            loaded.append(component)
    if "scaling_factor" in meta:
        parts["vae"].register_to_config(scaling_factor=meta["scaling_factor"])
    logger.info("loaded %s from %s", ", ".join(loaded) or "nothing", checkpoint_dir)
    return loaded


def import_zoo_folders(models_dir: Path, checkpoint_dir: Path) -> Path:
    """Turn shipped zoo pipelines (diffusers folders) into a checkpoint to continue from.

    ``--init-from trdq/zoo/models`` continues training the zoo as it ships: component
    weights go to ``checkpoint_dir/from-zoo`` in this script's own format, with the VAE's
    latent scaling factor in its meta.json.
    """
    target = checkpoint_dir / "from-zoo"
    target.mkdir(parents=True, exist_ok=True)
    sources = {
        "vae": models_dir / T2I_NAME / "vae",
        "text_encoder": models_dir / T2I_NAME / "text_encoder",
        "t2i_transformer": models_dir / T2I_NAME / "transformer",
        "t2v_transformer": models_dir / T2V_NAME / "transformer",
    }
    for component, folder in sources.items():
        (weights,) = folder.glob("*.safetensors")
        state = load_file(str(weights))
        if component == "text_encoder" and "encoder.embed_tokens.weight" not in state:
            state["encoder.embed_tokens.weight"] = state["shared.weight"].clone()  # tied, saved once
        save_file({k: v.contiguous() for k, v in state.items()},
                  str(target / COMPONENT_FILES[component]))
    record = models_dir / T2I_NAME / TRAINING_META
    if record.exists():
        meta = json.loads(record.read_text())
    else:  # a zoo assembled before the record shipped: only the VAE's scale is known
        vae_config = json.loads((sources["vae"] / "config.json").read_text())
        meta = {"scaling_factor": vae_config["scaling_factor"]}
    write_meta(target / "meta.json", meta)
    logger.info("imported the zoo pipelines in %s as checkpoint %s", models_dir, target)
    return target


def assemble(parts: dict, out: Path) -> dict[str, Path]:
    """Save both pipelines as diffusers folders (fp16 safetensors); returns name -> folder."""
    from diffusers import LattePipeline, PixArtAlphaPipeline

    shared = {k: parts[k] for k in ("tokenizer", "text_encoder", "vae", "scheduler")}
    for key in ("text_encoder", "vae", "t2i_transformer", "t2v_transformer"):
        parts[key].to("cpu", torch.float32).eval()
    folders = {T2I_NAME: out / T2I_NAME, T2V_NAME: out / T2V_NAME}
    save_pipeline(
        PixArtAlphaPipeline(transformer=parts["t2i_transformer"], **shared), folders[T2I_NAME]
    )
    save_pipeline(LattePipeline(transformer=parts["t2v_transformer"], **shared), folders[T2V_NAME])
    return folders


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*.safetensors"))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if args.smoke:
        _smoke_overrides(args)
    checkpoint_dir = args.checkpoint_dir or args.out / "checkpoints"
    _setup_logging(checkpoint_dir)
    device = _resolve_device(args.device)
    if device.type == "cuda":
        # The DiTs train in fp32 unless --bf16 (autocast); TF32 keeps the fp32 matmuls cheap.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    started = time.monotonic()
    meta: dict = {"command": "trdq zoo train " + shlex.join(argv), "seed": args.seed}
    torch.manual_seed(args.seed)
    parts = build_models(args.seed, args.t2i_patch_size, args.t2v_patch_size)
    if args.init_from and (args.init_from / T2I_NAME / "model_index.json").exists():
        args.init_from = import_zoo_folders(args.init_from, checkpoint_dir)
    if args.from_weights or args.init_from:
        load_checkpoint(parts, args.from_weights or args.init_from, meta)
    if args.from_weights:
        stages: list[str] = []
        previous = json.loads((args.from_weights / "meta.json").read_text())
        meta["command"], meta["history"] = previous.get("command", ""), previous.get("history", [])
        meta["eval"] = previous.get("eval", {})
    else:
        stages = [s for s in args.stages.split(",") if s]
        meta.update(
            device_name=torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else platform.processor() or "cpu",
            torch=torch.__version__,
        )
    if stages:
        meta["stages"] = stages
        _train(args, stages, parts, meta, device, checkpoint_dir)
        meta["total_seconds"] = round(time.monotonic() - started, 1)
        write_meta(checkpoint_dir / "meta.json", meta)
    folders = assemble(parts, args.out)
    _evaluate(args, folders, meta, device)
    for name, folder in folders.items():
        write_card(folder, name, meta, _folder_bytes(folder))
        # the training record travels with the weights, so `--init-from` a zoo keeps it
        write_meta(folder / TRAINING_META, meta)
    if stages or args.eval_images or args.eval_videos:
        write_meta(checkpoint_dir / "meta.json", meta)
    total = sum(_folder_bytes(f) for f in folders.values())
    logger.info(
        "done in %.0f s; zoo weights %.1f MB in %s",
        time.monotonic() - started,
        total / 1e6,
        args.out,
    )
    return 0


def _train(
    args, stages: list[str], parts: dict, meta: dict, device: torch.device, checkpoint_dir: Path
) -> None:
    limit = 24 if args.smoke else None
    # render only what the stages use (the images also give a missing latent scale)
    need_images = bool({"vae", "decoder", "t2i"} & set(stages)) or "scaling_factor" not in meta
    need_videos = bool({"vae", "decoder", "t2v"} & set(stages))
    images = build_set(
        "image",
        arch.T2I_RESOLUTION,
        args.images_per_caption,
        args.seed,
        limit=limit if need_images else 0,
        workers=args.workers,
        scenes=args.scenes,
    )
    videos = build_set(
        "video",
        arch.T2V_RESOLUTION,
        args.videos_per_caption,
        args.seed + 1,
        frames=arch.T2V_FRAMES,
        limit=(8 if args.smoke else None) if need_videos else 0,
        workers=args.workers,
    )
    data = meta.setdefault("data", {"variants": CAPTION_VARIANTS})
    data.update({"images": len(images)} if need_images else {})
    data.update({"videos": len(videos)} if need_videos else {})
    vae = parts["vae"]
    if "vae" in stages:
        vae_config = VAEConfig(steps=args.vae_steps, seconds=args.vae_seconds)
        if args.smoke:
            vae_config = replace(
                vae_config, image_batch=1, frame_batch=1, log_every=1, eval_batch=1
            )
        meta["vae"] = train_vae(vae, images.pixels, videos.pixels, vae_config, device, args.seed)
        if not args.smoke:
            meta["vae"]["heldout_reconstruction"] = reconstruction_accuracy(
                vae, device, args.workers
            )
    if "decoder" in stages:
        decoder_config = DecoderConfig(steps=args.decoder_steps, seconds=args.decoder_seconds)
        if args.smoke:
            decoder_config = replace(
                decoder_config, image_batch=1, frame_batch=1, log_every=1, eval_batch=1
            )
        meta["decoder"] = finetune_decoder(
            vae, images.pixels, videos.pixels, decoder_config, device, args.seed + 2
        )
        if not args.smoke:
            meta["decoder"]["heldout_reconstruction"] = reconstruction_accuracy(
                vae, device, args.workers
            )
        save_component(vae, checkpoint_dir / COMPONENT_FILES["vae"])
        write_meta(checkpoint_dir / "meta.json", meta)
    vae.to(device).eval().requires_grad_(False)
    image_latents = encode_latents(vae, images.pixels, device) if need_images else None
    if "vae" in stages or "scaling_factor" not in meta:
        assert image_latents is not None  # both conditions are in need_images
        meta["scaling_factor"] = latent_scaling_factor(image_latents)
        vae.register_to_config(scaling_factor=meta["scaling_factor"])
        save_component(vae, checkpoint_dir / COMPONENT_FILES["vae"])
        write_meta(checkpoint_dir / "meta.json", meta)
    scale = meta["scaling_factor"]
    logger.info("latent scaling factor %.4f", scale)
    # what both DiT stages share; each adds its own steps, time and batch
    dit_common: dict = {
        "lr": args.lr, "loss_weight_power": args.loss_weight_power, "bf16": args.bf16,
    }
    if args.smoke:
        dit_common["log_every"] = 1
    tokenizer, text_encoder = parts["tokenizer"], parts["text_encoder"]
    if "t2i" in stages:
        config = DiTConfig(
            steps=args.t2i_steps,
            seconds=args.t2i_seconds,
            batch=args.t2i_batch,
            text_lr=args.text_lr,
            **dit_common,
        )
        transformer = parts["t2i_transformer"]

        def save_t2i() -> None:
            save_component(text_encoder, checkpoint_dir / COMPONENT_FILES["text_encoder"])
            save_component(transformer, checkpoint_dir / COMPONENT_FILES["t2i_transformer"])

        tokens = tokenize_table(tokenizer, images.texts)
        meta["t2i"] = train_t2i(
            transformer, text_encoder, image_latents * scale, tokens, config, device, save_t2i
        )
        save_t2i()
        write_meta(checkpoint_dir / "meta.json", meta)
    del image_latents
    if "t2v" in stages:
        video_latents = encode_latents(vae, videos.pixels, device) * scale
        config = DiTConfig(
            steps=args.t2v_steps,
            seconds=args.t2v_seconds,
            batch=args.t2v_batch,
            **dit_common,
        )
        transformer = parts["t2v_transformer"]

        def save_t2v() -> None:
            save_component(transformer, checkpoint_dir / COMPONENT_FILES["t2v_transformer"])

        tokens = tokenize_table(tokenizer, videos.texts)
        meta["t2v"] = train_t2v(
            transformer, text_encoder, video_latents, tokens, config, device, save_t2v
        )
        save_t2v()
        write_meta(checkpoint_dir / "meta.json", meta)


def _evaluate(args, folders: dict[str, Path], meta: dict, device: torch.device) -> None:
    from trdq.tools.zoo_training.evaluate import evaluate_pipeline

    jobs = [
        (T2I_NAME, "image", args.eval_images, 100),
        (T2V_NAME, "video", args.eval_videos, 100),
        (T2V_NAME, "video", args.eval_single_videos, 1),
    ]
    device_name = meta.get("device_name", str(device))
    for name, kind, count, batch in jobs:
        if count <= 0:
            continue
        result = evaluate_pipeline(
            folders[name],
            kind,
            count,
            device=str(device),
            steps=args.eval_steps,
            batch=batch,
            workers=args.workers,
        )
        result["device_name"] = device_name
        meta.setdefault("eval", {}).setdefault(name, []).append(result)
    if args.eval_images or args.eval_videos:
        meta.pop("eval_note", None)


if __name__ == "__main__":
    raise SystemExit(main())

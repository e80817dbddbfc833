"""The `trdq` command: serve, generate, calibrate, bench, eval, zoo.

Sub-commands import their heavy modules lazily so `trdq --help` is instant. `serve`
is the one place the library reaches into the server package (the console script is
shared); the server itself lives in `server/` and is also `python -m server`.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from trdq.runtime.host_memory import configure_host_malloc


def _cmd_serve(args: argparse.Namespace) -> int:
    import os

    if args.host:
        os.environ["TRDQ_HOST"] = args.host
    if args.port:
        os.environ["TRDQ_PORT"] = str(args.port)
    from server.__main__ import main as serve_main

    return serve_main()


def _cmd_generate(args: argparse.Namespace) -> int:
    import numpy as np

    from trdq.pipeline import GenerationRequest, generate, load_pipeline, max_frames

    default_model = "tiny-shapes-t2i" if args.kind == "image" else "tiny-shapes-t2v"
    pipe = load_pipeline(args.model or default_model, device=args.device)
    if args.quant != "fp":
        from trdq.api import quantize
        from trdq.config import QuantConfig

        quantize(pipe, QuantConfig.preset(args.quant), cache_dir=args.cache_dir, backend=args.backend)
    size = int(pipe.transformer.config.sample_size) * pipe.vae_scale_factor
    request = GenerationRequest(
        prompts=[args.prompt], seeds=[args.seed], width=args.width or size,
        height=args.height or size, num_inference_steps=args.steps,
        guidance_scale=args.guidance, negative_prompts=[args.negative_prompt],
        num_frames=(args.frames or max_frames(pipe)) if args.kind == "video" else None,
    )
    started = time.perf_counter()
    pixels = generate(pipe, request)[0]
    elapsed = time.perf_counter() - started
    out = Path(args.output)
    fmt = out.suffix.lstrip(".").lower().replace("jpg", "jpeg")
    from server import media  # encoding only: no server state is built

    if args.kind == "image":
        data = media.encode_image(np.asarray(pixels), fmt or "png")
    else:
        data = media.encode_video(np.asarray(pixels), fmt or "mp4", args.fps)
    out.write_bytes(data)
    print(f"wrote {out} ({len(data)} bytes) in {elapsed:.2f} s", file=sys.stderr)
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    """Fill the calibration cache: one model and precision, or what `trdq serve` would load.

    With no --model, the TRDQ_* settings decide (models, precisions, cache dir, device,
    backend, prompts), so a one-off Job can warm the cache for every replica.
    """
    from trdq.api import quantize
    from trdq.pipeline import default_dtype, load_pipeline, resolve_device

    if args.model:
        jobs = [(args.model, args.quant)]
        cache_dir, device_name = args.cache_dir or "~/.cache/trdq", args.device or "auto"
        backend, prompts = args.backend, args.prompts
    else:
        from server.settings import Settings  # settings only: pydantic, no server state

        settings = Settings()
        models = [m for m in (settings.image_model, settings.video_model_name) if m]
        quants = [q for q in settings.quant_names if q != "fp"]
        if args.quant_given:
            quants = [args.quant]
        jobs = [(model, quant) for model in models for quant in quants]
        cache_dir = args.cache_dir or settings.cache_dir
        device_name = args.device or settings.device
        backend = settings.backend
        prompts = args.prompts or settings.calibration_prompts
    device = resolve_device(device_name)
    for model_name, quant in jobs:
        started = time.perf_counter()
        pipe = load_pipeline(model_name, device=device, dtype=default_dtype(device))
        report = quantize(
            pipe, quant, cache_dir=Path(cache_dir).expanduser(), backend=backend,
            calibration_prompts=prompts, seed=args.seed, progress=True,
        )
        print(
            f"{model_name} {quant}: calibration {report.calibration_id} "
            f"cache={','.join(report.cache)} backend={report.backend} "
            f"calibration {report.calibration_seconds:.1f} s, total "
            f"{time.perf_counter() - started:.1f} s, {len(report.replaced)} layers, "
            f"denoiser weights {report.weight_bytes_before} -> {report.weight_bytes_after} bytes",
            flush=True,
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trdq", description="TR-DQ quantized diffusion serving")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP server (settings from TRDQ_* env)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.set_defaults(func=_cmd_serve)

    gen = sub.add_parser("generate", help="generate one image or video to a file")
    gen.add_argument("kind", choices=["image", "video"])
    gen.add_argument("prompt")
    gen.add_argument("-o", "--output", required=True, help="file; the suffix picks the format")
    gen.add_argument("--model", help="zoo name or local diffusers folder")
    gen.add_argument("--quant", default="fp")
    gen.add_argument("--backend", default="auto")
    gen.add_argument("--cache-dir", default="~/.cache/trdq")
    gen.add_argument("--device", default="cpu")
    gen.add_argument("--negative-prompt", default="")
    gen.add_argument("--width", type=int)
    gen.add_argument("--height", type=int)
    gen.add_argument("--frames", type=int)
    gen.add_argument("--fps", type=int, default=8)
    gen.add_argument("--steps", type=int, default=20)
    gen.add_argument("--guidance", type=float, default=4.5)
    gen.add_argument("--seed", type=int, default=0)
    gen.set_defaults(func=_cmd_generate)

    cal = sub.add_parser(
        "calibrate",
        help="fill the calibration cache (no --model: what `trdq serve` would load)",
    )
    cal.add_argument("--model", help="zoo name or local folder (default: TRDQ_MODEL/VIDEO_MODEL)")
    cal.add_argument("--quant", help="precision preset (default: TRDQ_QUANT, or w8a8 with --model)")
    cal.add_argument("--cache-dir", help="default: TRDQ_CACHE_DIR or ~/.cache/trdq")
    cal.add_argument("--prompts", help="text file, one calibration prompt per line")
    cal.add_argument("--backend", default="auto")
    cal.add_argument("--device", help="auto | cpu | cuda[:N] (default: TRDQ_DEVICE or auto)")
    cal.add_argument("--seed", type=int, default=0)
    cal.set_defaults(func=_cmd_calibrate)

    # Listed for --help; main() hands their arguments to their own parsers.
    for name, text in (
        ("bench", "speed and memory benchmark (see `trdq bench --help`)"),
        ("eval", "quality benchmark on the shapes world (see `trdq eval --help`)"),
        ("zoo", "build or train the embedded pipelines"),
        ("loadtest", "load test a running server (loopback only)"),
        ("loadsuite", "start servers, load them, report figures (--out-md to record them)"),
    ):
        sub.add_parser(name, help=text, add_help=False)
    return parser


#: Sub-commands with their own argument parsers: everything after the name is theirs.
#: They live in trdq.tools, outside the served path.
FORWARDED = {"bench": "trdq.tools.bench", "eval": "trdq.tools.eval_cli",
             "zoo": "trdq.tools.zoo_cli", "loadtest": "trdq.tools.loadtest",
             "loadsuite": "trdq.tools.loadsuite"}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        configure_host_malloc()  # TRDQ_HOST_MALLOC, before any thread or model exists
    except ValueError as error:
        print(f"invalid setting: {error}", file=sys.stderr)
        return 2
    if argv and argv[0] in FORWARDED:
        import importlib

        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return importlib.import_module(FORWARDED[argv[0]]).main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "calibrate":
        args.quant_given = args.quant is not None
        args.quant = args.quant or "w8a8"
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())

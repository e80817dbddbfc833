"""`trdq eval`: the shapes quality benchmark over quantization settings.

For each setting (a QuantConfig preset name) a freshly loaded pipeline is quantized with
``trdq.quantize`` (calibration loaded from, or saved to, ``--cache-dir``) and generates the
same held-out prompts with the same seeds; ``trdq.eval.report.run_quality`` scores them
(analytic prompt accuracy, per attribute, PSNR/SSIM to the ``fp`` sample of the same seed,
generation seconds). ``fp`` is always run first: its samples are the reference. Loading and
quantization (calibration) are outside the timed part, and only one pipeline is held at a
time. The JSON (``--json``) is ``QualityReport.to_dict``; the Markdown file named by
``--out-md`` (docs/QUALITY.md for the record: ``--out-md docs/QUALITY.md``) gets one section
per model, replaced when that model is evaluated again. Without ``--out-md`` no Markdown is
written, so a run never dirties the checkout unless asked.

``--ablation w8a8`` expands to the ablation chain ``w8a8-minmax -> w8a8-rot ->
w8a8-rot-search -> w8a8-rot-groups-search -> w8a8`` (full TR-DQ) plus ``faithful`` (the
released algorithm, which runs on the reference backend whatever ``--backend`` says);
``--ablation w4a8`` likewise with ``faithful-w4a8``, and the lower widths ``w6a6`` and
``w4a4`` (for models where W8A8 is lossless even with min-max, so the components' effects
show) with theirs.

``--split train`` draws the prompts from the training combinations instead: a development
set on which a quantizer can be tuned while the held-out prompts stay unseen until the
report. ``--partial`` (default a third) of the prompts are partial captions of their
combination ("a red circle"), as users write them; the report splits the accuracy by
caption kind.

This module is the command line (``build_parser``, ``main``: the settings expanded, run,
and the JSON and Markdown rewritten after each). The rest, one concept a module, all
under ``trdq.tools``:

- ``eval_settings``: the settings a run evaluates (``fp`` first, the ablation chains) and
  the order its rows are reported in.
- ``eval_runner``: each setting in turn, loaded, quantized, generated and scored.
- ``eval_notes``: the notes under a section (issue 5's targets, the ablation stages, each
  setting's backend and calibration cache).
- ``eval_markdown``: one model's section of the Markdown file, and the device it names.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from pathlib import Path

from trdq.data.split import SPLITS
from trdq.eval.report import QualityReport
from trdq.tools.eval_markdown import device_description, model_section, update_markdown
from trdq.tools.eval_notes import STAGE_TEXT, TARGETS, setting_notes, target_notes
from trdq.tools.eval_runner import SettingInfo, evaluate_settings
from trdq.tools.eval_settings import (
    ABLATION_SUFFIXES,
    FAITHFUL_OF,
    REFERENCE,
    ablation_chain,
    canonical_order,
    expand_settings,
)

# the names that moved stay importable from here (tests and callers use them)
__all__ = [
    "ABLATION_SUFFIXES",
    "FAITHFUL_OF",
    "REFERENCE",
    "STAGE_TEXT",
    "TARGETS",
    "SettingInfo",
    "ablation_chain",
    "build_parser",
    "canonical_order",
    "device_description",
    "evaluate_settings",
    "expand_settings",
    "main",
    "model_section",
    "setting_notes",
    "target_notes",
    "update_markdown",
]

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="trdq eval",
        description="Generate held-out shapes prompts with fixed seeds under each quantization "
        "setting; report prompt accuracy, PSNR/SSIM to fp and generation time.",
    )
    p.add_argument("--model", default="tiny-shapes-t2i", help="zoo name or diffusers folder")
    p.add_argument(
        "--quant",
        default=None,
        help="comma list of presets (fp is always run first); default w8a8,w4a8 "
        "unless --ablation is given; a '+fp8attn' or '+fa3attn' suffix (w8a8+fp8attn) also "
        "runs the self-attention through that FA3 kernel (Hopper GPUs)",
    )
    p.add_argument(
        "--ablation",
        action="append",
        default=[],
        metavar="w8a8|w4a8|w6a6|w4a4",
        help="add the ablation chain (minmax -> +rot -> +search with one timestep group -> "
        "+eight groups -> full) "
        "and the faithful preset; repeatable or comma-separated",
    )
    p.add_argument("--prompts", type=int, default=32, help="prompts (default 32)")
    p.add_argument(
        "--split",
        choices=SPLITS,
        default="heldout",
        help="prompt combinations: heldout (the report; default) or train (a development "
        "set for tuning a quantizer without looking at the held-out prompts)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="picks the prompt sample; prompt i is generated with seed SEED+i",
    )
    p.add_argument(
        "--partial",
        type=float,
        default=1 / 3,
        help="fraction of the prompts given as partial captions, some attributes left out "
        "(default 1/3; 0: full combinations only)",
    )
    p.add_argument(
        "--scenes",
        type=float,
        default=0.0,
        help="fraction of the prompts (images only) given as two-shape scenes, 'a ... and a "
        "...' (trdq.data.scene; default 0)",
    )
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=4.5)
    p.add_argument("--width", type=int, help="default: the denoiser's sample size x VAE factor")
    p.add_argument("--height", type=int)
    p.add_argument("--frames", type=int, help="video frames (default: the model's length)")
    p.add_argument("--batch", type=int, default=8, help="prompts per pipeline call")
    p.add_argument(
        "--calib-prompts",
        type=int,
        help="calibrate on this many prompts instead of the preset's (noted in the Markdown)",
    )
    p.add_argument("--backend", default="auto")
    p.add_argument("--device", default="cpu")
    p.add_argument("--cache-dir", default="~/.cache/trdq")
    p.add_argument("--json", help="write the report JSON here (updated after every setting)")
    p.add_argument(
        "--out-md",
        default=None,
        help="Markdown to update, e.g. docs/QUALITY.md (default: none, no Markdown "
        "is written)",
    )
    p.add_argument("--note", action="append", default=[], help="extra note for the Markdown")
    p.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="processes scoring the samples (default: up to 8, one per core)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO,
            stream=sys.stderr,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
    if min(args.prompts, args.batch, args.steps, args.workers) < 1:
        print("trdq eval: --prompts, --batch, --steps and --workers must be >= 1",
              file=sys.stderr)
        return 2
    if not 0.0 <= args.partial <= 1.0:
        print("trdq eval: --partial must be in [0, 1]", file=sys.stderr)
        return 2
    if not 0.0 <= args.scenes <= 1.0:
        print("trdq eval: --scenes must be in [0, 1]", file=sys.stderr)
        return 2
    quant = args.quant if args.quant is not None or args.ablation else "w8a8,w4a8"
    try:
        settings = expand_settings(quant, args.ablation)
    except ValueError as exc:
        print(f"trdq eval: {exc}", file=sys.stderr)
        return 2
    import diffusers
    import transformers

    # our own progress bars (per setting and batch) replace the per-component loading bars
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    command = "trdq eval " + shlex.join(sys.argv[1:] if argv is None else argv)
    logger.info("settings: %s", ", ".join(settings))
    device = device_description(args.device)
    targets: list[str] = []

    def write(report: QualityReport, infos: list[SettingInfo]) -> None:
        nonlocal targets
        order = canonical_order([r.quant for r in report.results])
        report = QualityReport(
            report.model, report.prompts, sorted(report.results, key=lambda r: order.index(r.quant))
        )
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(report.to_json() + "\n")
        if args.split == "heldout":
            targets = target_notes(report, args.task)
        else:
            targets = [
                (f"Prompts from the {args.split.upper()} split (a development set): the "
                 "issue's targets are judged on held-out prompts only.")
            ]
        notes = [*targets, *setting_notes(settings, infos), *args.note]
        if args.calib_prompts:
            notes.append(
                f"Calibration on {args.calib_prompts} prompts per setting "
                "(--calib-prompts) instead of the presets' own count."
            )
        missing = [n for n in settings if n not in order]
        if missing:
            notes.append(f"Not run yet (partial results): {', '.join(missing)}.")
        if args.out_md and args.out_md.lower() != "none":
            section = model_section(report, command, device, notes)
            update_markdown(Path(args.out_md), section, args.model)

    evaluate_settings(args, settings, on_result=write)
    if args.out_md and args.out_md.lower() != "none":
        logger.info("updated %s", args.out_md)
    for note in targets:
        logger.info("%s", note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

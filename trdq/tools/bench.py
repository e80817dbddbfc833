"""``trdq bench``: latency, peak memory and weight bytes of a pipeline, per configuration.

Every configuration ("row") runs in the same process, on the same device, against the
same baselines, and the ratios are computed from those numbers only:
``fp32-eager`` (CPU only), ``bf16-eager``, ``bf16-compile``, each TR-DQ preset through
``trdq.quantize`` eager and compiled (``w8a8-eager``, ``w8a8-compile``, ...), torchao's
``Float8DynamicActivationFloat8WeightConfig`` (per-row) and
``Int8DynamicActivationInt8WeightConfig`` with compile when torchao is importable, and
``fp8swap-*`` (every block ``nn.Linear`` swapped straight for the cuda_fp8 op, dynamic
per-token, no calibration) when asked for.

Scopes: ``pipeline`` (text encode + sampler loop + VAE decode, wall time around the
call) and ``denoiser_step`` (one CFG forward of the denoiser, CUDA events). Median of
``--runs`` after ``--warmup`` runs; peak memory via ``torch.cuda.max_memory_allocated``
(process max RSS on CPU); ``+cg`` rows add the bytes their CUDA graphs' private pool holds
for replayed intermediates, which that counter never sees (``trdq.tools.bench_memory``). Only the
denoiser differs between rows; the other components stay resident. "compile" is ``torch.compile`` (default mode, never max-autotune) of each
transformer block (regional: the 28 identical blocks share one compiled graph), or of the
whole denoiser with ``--compile full``.

Output: ``--json FILE`` with exactly ``{"preset", "device", "torch", "results": [{"name",
"scope", "latency_s", "peak_memory_bytes", "weight_bytes"}]}`` (names get ``@b4`` for
batch 4), a sidecar ``FILE.details.json`` (batch, per-component bytes, compile seconds,
quantize reports, errors), and, with ``--markdown FILE``, a dated table appended there.
Nothing under docs/ is written unless asked: a run kept for the record goes to
``docs/bench/NAME.json`` (with its sidecar), and ``python -m trdq.tools.bench_report --all
docs/bench --out docs/BENCHMARKS.md`` regenerates the tables from every such record.

This module is the command line (``build_parser``, ``main``) and the run over the rows
(``run_bench``: each row in turn, a failing one recorded, then the notes and outputs). The
rest of the harness, one concept a module, all under ``trdq.tools``:

- ``bench_rows``: the row names, and every suffix a name can carry (``+cg``, ``+t5cg``,
  ``+fusedff``, ``+tritoncast``, ...), with what each asks for; the default rows.
- ``bench_runner``: one row prepared from its name (quantize, compile, fuse, attention,
  CUDA graphs), timed in each scope and batch, then released.
- ``bench_measure``: the result record, the timers, peak memory and weight bytes.
- ``bench_notes``: the notes a run adds under its table (settings, stages, text encoder).
- ``bench_presets`` / ``bench_family_presets``: the models and their geometry;
  ``bench_variants``: the peer rows' transforms and the ``--profile`` kernel times;
  ``bench_memory``: CUDA-graph pools and per-stage peaks; ``bench_report``: the JSON, its
  sidecar and the Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from pathlib import Path
from typing import Any

import torch

from trdq.kernels import cpu_int8
from trdq.runtime import host_memory
from trdq.runtime.compile import repeated_blocks
from trdq.tools import bench_notes
from trdq.tools.bench_measure import BenchResult, component_bytes  # noqa: F401 - re-exported
from trdq.tools.bench_presets import PRESET_NAMES, get_preset
from trdq.tools.bench_report import render_markdown, write_outputs
from trdq.tools.bench_rows import default_rows
from trdq.tools.bench_runner import _Runner

# component_bytes, default_rows and _Runner stay importable from here too (tests use them)
__all__ = ["BenchResult", "main", "run_bench"]


def _torchao_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("torchao") is not None


def _folder_builder(model: str):
    def build(device: torch.device, dtype: torch.dtype):
        from trdq.pipeline import load_pipeline

        pipe = load_pipeline(model, device=device, dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    return build


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    preset = get_preset(args.preset)
    if args.model:  # same geometry/steps/CFG as the preset, real weights from a local folder
        preset.build = _folder_builder(args.model)
        preset.notes = [f"weights from {args.model}"] + preset.notes[1:]
    quant = [q for q in (args.quant or "").split(",") if q]
    torchao = not args.no_torchao and _torchao_importable()
    rows = args.rows.split(",") if args.rows else default_rows(device, quant, torchao, args.swap)
    runner = _Runner(preset, device, args)
    notes = list(preset.notes) + [
        (
            f"compile={args.compile} (torch.compile default mode"
            + (f"; each of the {len(repeated_blocks(runner.base))} repeated blocks"
               if args.compile == "regional" else "")
            + "); '+cg' rows replay the "
            "denoiser forward from CUDA graphs (one per timestep group; their peak includes "
            "the graphs' private pool)"
        ),
        (f"fused q/k/v projections in every row: {runner.fused_attention} attention modules"
         if runner.fused_attention else
         "q/k/v projections unfused" + (" (diffusers cannot fuse this denoiser's)"
                                        if args.fuse_qkv else "")),
        f"median of {args.runs} pipeline / {args.step_runs} step runs after warm-up",
        (
            f"TR-DQ rows: trdq.quantize backend={args.backend}, calibrated on "
            f"{args.calib_prompts} prompt(s) at "
            f"{preset.calib_hw or 'the pipeline default size'}, "
            f"{'fp32' if runner.act_dtype() == torch.float32 else 'bf16'} activations"
            + ("; calibration=timing (no search, GPTQ or weight clip: same kernels, "
               "latency only, not the recipe's quality)" if args.calibration == "timing" else "")
        ),
    ]
    settings = bench_notes.trdq_settings()
    if settings:
        notes.append(f"settings: {settings}")
    if device.type == "cpu":
        prepack = (" (plus a prepacked copy of each 8-bit weight while it runs, 1 byte per "
                   "weight, not in the weights column)"
                   if cpu_int8.ONEDNN_PREPACK or cpu_int8.U8_GEMM else "")
        notes.append(f"cpu_int8 GEMM (8-bit weights): {cpu_int8.gemm_path()}{prepack}")
        notes.append(
            "peak GB on CPU is the process's max RSS so far (it never falls: a row shows the "
            "largest of its own and every earlier row's, calibration included)"
        )
    for row in rows:
        print(f"[bench] row {row} ...", flush=True)
        try:
            runner.run_row(row)
        except Exception as exc:  # noqa: BLE001 - one failing row must not lose the others
            runner.details["errors"][row] = f"{type(exc).__name__}: {exc}"
            print(f"[bench] row {row} FAILED: {type(exc).__name__}: {exc}", flush=True)
            traceback.print_exc()
            runner._release()
        if args.json:  # partial results survive a time limit
            write_outputs(
                preset.name, device, runner.results, runner.details, args.json, None, notes
            )
    for prefix, title, decimals in (("peak_by_stage_gb", "peak GB by stage", 2),
                                    ("ms_by_stage", "wall ms by stage (edges synchronized)", 1)):
        stage_note = bench_notes.stage_note(runner.details["rows"], prefix, title, decimals)
        if stage_note:
            notes.append(stage_note)
    encoder_note = bench_notes.text_encoder_note(runner.details["rows"])
    if encoder_note:
        notes.append(encoder_note)
    md = None if args.no_markdown or not args.markdown else Path(args.markdown)
    return write_outputs(preset.name, device, runner.results, runner.details, args.json, md, notes)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trdq bench", description=__doc__.splitlines()[0])
    p.add_argument(
        "--preset",
        default="cpu-small",
        help=f"one of {', '.join(PRESET_NAMES)}, or a zoo name / diffusers folder",
    )
    p.add_argument("--json", help="write the results here")
    p.add_argument(
        "--model",
        help="local diffusers folder (or zoo name) replacing the "
        "preset's random weights; geometry, steps and CFG stay the preset's",
    )
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    p.add_argument("--rows", help="comma list of row names (default: all that apply)")
    p.add_argument(
        "--quant",
        default=None,
        help="TR-DQ presets to bench (default: w8a8,fp8,w4a8 on CUDA, w8a8 on CPU)",
    )
    p.add_argument("--backend", default="auto", help="kernel backend for trdq.quantize")
    p.add_argument("--scopes", default="pipeline,denoiser_step")
    p.add_argument("--batches", default=None, help="comma list (default: the preset's)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--step-runs", type=int, default=10)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--compile", choices=("regional", "full"), default="regional")
    p.add_argument("--swap", action="store_true", help="add fp8swap-* rows (no calibration)")
    p.add_argument(
        "--no-fuse-qkv",
        dest="fuse_qkv",
        action="store_false",
        help="keep separate q/k/v projections (default: fused, for every row)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--profile",
        action="store_true",
        help="also record GPU kernel time per category of one denoiser step",
    )
    p.add_argument("--no-torchao", action="store_true")
    p.add_argument(
        "--act-dtype",
        choices=("auto", "bf16", "fp32"),
        default="auto",
        help="activations of the quantized and peer rows (auto: what the server runs, fp32 on "
        "CPU, bf16 on GPU; tables before 2026-11-27 14:00 ran bf16 everywhere)",
    )
    p.add_argument("--calib-prompts", type=int, default=1)
    p.add_argument(
        "--calibration",
        choices=("full", "timing"),
        default="full",
        help="full: the preset's recipe; timing: the same quantized layers and kernels "
        "without the parameter search, GPTQ or weight clip (minutes less on large models; "
        "for latency only, the notes say so)",
    )
    p.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "trdq-bench"))
    p.add_argument("--markdown", help="also append the run's table to this Markdown file")
    p.add_argument("--no-markdown", action="store_true", help="(the default) no Markdown")
    p.add_argument(
        "--render",
        metavar="JSON",
        help="only append the table of an existing results file to --markdown",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    host_memory.configure_host_malloc()  # as `trdq` does (also for python -m trdq.tools.bench)
    if args.render:
        if not args.markdown:
            print("--render needs --markdown FILE", file=sys.stderr)
            return 2
        render_markdown(args.render, Path(args.markdown))
        return 0
    args.scopes = [s for s in args.scopes.split(",") if s]
    args.batches = [int(b) for b in args.batches.split(",")] if args.batches else None
    if args.quant is None:
        cuda = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")) != "cpu"
        args.quant = "w8a8,fp8,w4a8" if cuda else "w8a8"
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    doc = run_bench(args)
    print(json.dumps(doc, indent=1))
    return 0 if doc["results"] else 1


if __name__ == "__main__":
    sys.exit(main())

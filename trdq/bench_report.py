"""Output of ``trdq bench``: the stable JSON, its details sidecar, the BENCHMARKS.md table."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import torch

__all__ = ["device_name", "markdown_table", "render_markdown", "write_outputs"]


def _versions() -> dict[str, str]:
    out = {"torch": torch.__version__}
    for mod in ("triton", "diffusers", "torchao", "transformers"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            out[mod] = "-"
    return out


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from trdq.machine import cpu_isa, cpu_model

    return f"CPU {cpu_model()} ({cpu_isa()}) x{torch.get_num_threads()} threads"


def write_outputs(
    preset: str,
    device: torch.device,
    results: list,
    details: dict[str, Any],
    json_path: str | None,
    md_path: Path | None,
    notes: list[str],
) -> dict[str, Any]:
    doc = {
        "preset": preset,
        "device": device_name(device),
        "torch": torch.__version__,
        "results": [r.public() for r in results],
    }
    if json_path:
        Path(json_path).write_text(json.dumps(doc, indent=1))
        side = dict(
            details,
            versions=_versions(),
            notes=notes,
            utc=dt.datetime.now(dt.timezone.utc).isoformat(),
            batches={r.name: r.batch for r in results},
        )
        Path(json_path + ".details.json").write_text(json.dumps(side, indent=1, default=str))
    if md_path is not None:
        md_path.parent.mkdir(parents=True, exist_ok=True)
        _ensure_header(md_path)
        with md_path.open("a") as fh:
            fh.write(
                markdown_table(
                    doc, notes, errors=details.get("errors"),
                    profiles=step_profiles(details.get("rows", {})),
                )
            )
    return doc


MD_HEADER = """# Benchmarks

Appended by `trdq bench` (one section per run; never edited by hand). Every ratio compares
rows of the same run on the same device. Rows: `bf16-eager`, `bf16-compile` (torch.compile
default mode), `+cg` (denoiser forward replayed from CUDA graphs), TR-DQ presets through
`trdq.quantize` (`fp8`, `w8a8`, `w4a8`), `fp8swap` (block linears swapped straight for the
cuda_fp8 op, dynamic per-token, no calibration), torchao peers. `@b4` = batch 4;
`+t5int8` / `+t5int4` = the text encoder's linears weight-only quantized too; `+vaetile` =
diffusers' tiled VAE decode in that row; `+torchops` (CPU) = `cpu_int8` quantizes
activations with torch ops instead of its C pass. `weights MB` is the denoiser (denoiser_step) or all
components (pipeline). `peak GB` is `torch.cuda.max_memory_allocated` (process max RSS on
CPU); from 2026-11-27 on, `+cg` rows add the idle bytes of their CUDA graphs' private pool
(replayed intermediates, which that counter never sees), so earlier `+cg` peaks read low.
"""


def _ensure_header(md_path: Path) -> None:
    if not md_path.exists() or not md_path.read_text().strip():
        md_path.write_text(MD_HEADER)


def markdown_table(
    doc: dict[str, Any],
    notes: list[str],
    versions: dict[str, str] | None = None,
    when: dt.datetime | None = None,
    errors: dict[str, str] | None = None,
    profiles: dict[str, dict[str, Any]] | None = None,
) -> str:
    v = versions or _versions()
    when = when or dt.datetime.now(dt.timezone.utc)
    lines = [
        f"\n## {when:%Y-%m-%d %H:%M} UTC - `{doc['preset']}` on {doc['device']}\n",
        (
            f"torch {v['torch']}, triton {v['triton']}, diffusers {v['diffusers']}, "
            f"torchao {v['torchao']}. "
        )
        + "; ".join(notes)
        + ".\n",
    ]
    by_key = {(r["name"], r["scope"]): r for r in doc["results"]}
    base = {key: r["latency_s"] for key, r in by_key.items()}
    # fp32 eager is the diffusers CPU default and the CPU target's baseline: its column
    # appears when the run has that row
    named = (["fp32-eager"] if any(n == "fp32-eager" for n, _ in base) else []) + [
        "bf16-eager",
        "bf16-compile",
    ]
    columns = [f"vs {name}" for name in named] + ["vs fastest bf16"]
    lines += [
        "| name | scope | latency ms | " + " | ".join(columns)
        + " | peak GB | peak vs bf16-eager | weights MB | weights vs bf16-eager |",
        "|---|---|---|" + "---|" * len(columns) + "---|---|---|---|",
    ]

    def batch_of(name: str) -> str:
        return "@" + name.split("@", 1)[1] if "@" in name else ""

    for r in doc["results"]:
        suffix = batch_of(r["name"])
        refs = [base.get((ref + suffix, r["scope"])) for ref in named]
        bf16 = [
            lat
            for (name, scope), lat in base.items()
            if name.startswith("bf16-") and scope == r["scope"] and batch_of(name) == suffix
        ]
        refs.append(min(bf16) if bf16 else None)
        ratios = [_ratio(ref, r["latency_s"]) for ref in refs]
        # memory against bf16 eager, the same way round as the speed-ups (>1: smaller)
        eager = by_key.get(("bf16-eager" + suffix, r["scope"]), {})
        lines.append(
            f"| {r['name']} | {r['scope']} | {r['latency_s'] * 1e3:.1f} | "
            + " | ".join(ratios)
            + f" | {r['peak_memory_bytes'] / 1e9:.2f}"
            + f" | {_ratio(eager.get('peak_memory_bytes'), r['peak_memory_bytes'])}"
            + f" | {r['weight_bytes'] / 1e6:.1f}"
            + f" | {_ratio(eager.get('weight_bytes'), r['weight_bytes'])} |"
        )
    lines += _profile_table(profiles or {})
    for row, err in (errors or {}).items():
        first = err.splitlines()[0] if err else ""
        lines.append(f"\nRow `{row}` failed: {first[:300]}")
    return "\n".join(lines) + "\n"


def step_profiles(rows: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``--profile`` results from the details' rows: ``{"row@bN": profile}``."""
    found = {}
    for name, info in rows.items():
        for key, profile in (info or {}).items():
            if key.startswith("profile@") and isinstance(profile, dict):
                found[f"{name} {key.split('@', 1)[1]}"] = profile
    return found


def _profile_table(profiles: dict[str, dict[str, Any]]) -> list[str]:
    """GPU kernel time of one denoiser step per category, one line per profiled row: the
    table above times the wall clock, which without CUDA graphs includes the host's
    launch overhead, so a profiled row's GPU time can be far below its latency."""
    if not profiles:
        return []
    categories: list[str] = []
    for profile in profiles.values():
        for cat in profile.get("ms_per_step_by_category", {}):
            if cat not in categories:
                categories.append(cat)
    lines = [
        "",
        "GPU kernel time per denoiser step (`--profile`, torch.profiler, ms):",
        "",
        "| row | " + " | ".join(categories) + " | GPU total |",
        "|---|" + "---|" * (len(categories) + 1),
    ]
    for row, profile in profiles.items():
        by_cat = profile.get("ms_per_step_by_category", {})
        cells = [f"{by_cat[c]:.2f}" if c in by_cat else "-" for c in categories]
        lines.append(f"| {row} | " + " | ".join(cells) + f" | {profile.get('total_ms', 0):.2f} |")
    return lines


def _ratio(reference: float | None, value: float) -> str:
    """``reference / value`` as "1.23x" (>1: this row is faster or smaller), "-" if unknown."""
    return f"{reference / value:.2f}x" if reference and value else "-"


def render_markdown(json_path: str, md_path: Path) -> None:
    """Append the table of a results file written elsewhere (e.g. on a GPU machine),
    with the versions recorded there."""
    doc = json.loads(Path(json_path).read_text())
    _ensure_header(md_path)
    side_path = Path(json_path + ".details.json")
    side = json.loads(side_path.read_text()) if side_path.exists() else {}
    if "utc" in side:
        when = dt.datetime.fromisoformat(side["utc"])
    else:  # results written before the timestamp was recorded: the file's own time
        when = dt.datetime.fromtimestamp(Path(json_path).stat().st_mtime, dt.timezone.utc)
    with md_path.open("a") as fh:
        fh.write(
            markdown_table(
                doc,
                side.get("notes", []),
                side.get("versions"),
                when,
                side.get("errors"),
                step_profiles(side.get("rows", {})),
            )
        )

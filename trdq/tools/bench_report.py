"""Output of ``trdq bench``: the stable JSON, its details sidecar, the markdown tables, and
docs/BENCHMARKS.md generated from every results file under docs/bench (``render_all``)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, TypeGuard

import torch

__all__ = [
    "device_name",
    "is_bench_result",
    "markdown_table",
    "render_all",
    "render_markdown",
    "write_outputs",
]


def _versions() -> dict[str, str]:
    out: dict[str, str] = {"torch": torch.__version__}
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


#: What the rows and columns of every table mean (heads BENCHMARKS.md, appended or generated).
ROW_LEGEND = """Every ratio compares
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

MD_HEADER = (
    "# Benchmarks\n\nAppended by `trdq bench` (one section per run; never edited by hand). "
    + ROW_LEGEND
)


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
    level: int = 2,
    source: str | None = None,
) -> str:
    v = versions or _versions()
    when = when or dt.datetime.now(dt.timezone.utc)
    lines = [
        f"\n{'#' * level} {when:%Y-%m-%d %H:%M} UTC - `{doc['preset']}` on {doc['device']}\n",
        (f"From {source}. " if source else "")
        + ", ".join(
            f"{mod} {v[mod]}" for mod in ("torch", "triton", "diffusers", "torchao") if mod in v
        )
        + "."
        + (" " + "; ".join(notes) + "." if notes else "")
        + "\n",
    ]
    by_key = {(r["name"], r["scope"]): r for r in doc["results"]}
    base = {key: r["latency_s"] for key, r in by_key.items()}
    # fp32 eager is the diffusers CPU default and the CPU target's baseline: its column
    # appears when the run has that row; so does bf16 + compile + CUDA graphs, the GPU
    # targets' baseline (issue #24)
    named = (["fp32-eager"] if any(n == "fp32-eager" for n, _ in base) else []) + [
        "bf16-eager",
        "bf16-compile",
    ] + (["bf16-compile+cg"] if any(n == "bf16-compile+cg" for n, _ in base) else [])
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


# --- docs/BENCHMARKS.md, generated from every results file under docs/bench ---

RENDER_ALL_COMMAND = "python -m trdq.tools.bench_report --all docs/bench --out docs/BENCHMARKS.md"
_RESULT_KEYS = frozenset({"preset", "device", "torch", "results"})
_SIDECAR = ".details.json"


def is_bench_result(doc: Any) -> TypeGuard[dict[str, Any]]:
    """A ``trdq bench --json`` file; probe records under docs/bench have other shapes."""
    return isinstance(doc, dict) and _RESULT_KEYS <= doc.keys()


def _sidecar_path(path: Path) -> Path | None:
    # FILE.json.details.json as write_outputs names it; FILE.details.json in older runs
    for candidate in (path.with_name(path.name + _SIDECAR), path.with_name(path.stem + _SIDECAR)):
        if candidate.exists():
            return candidate
    return None


def _git_date(path: Path) -> dt.datetime | None:
    try:
        out = subprocess.run(
            ["git", "log", "-1", "--format=%cI", "--", path.name],
            cwd=path.parent, capture_output=True, text=True, check=False,
        ).stdout.strip()
    except OSError:  # no git on this machine
        return None
    return dt.datetime.fromisoformat(out).astimezone(dt.timezone.utc) if out else None


def _run_time(path: Path, side: dict[str, Any]) -> tuple[dt.datetime, str]:
    """When the run ended: the sidecar's ``utc``; for files written before that was
    recorded, the file's last commit (then its mtime), which is later than the run."""
    if "utc" in side:
        return dt.datetime.fromisoformat(side["utc"]).astimezone(dt.timezone.utc), "sidecar utc"
    committed = _git_date(path)
    if committed is not None:
        return committed, "date of the file's last commit"
    return dt.datetime.fromtimestamp(path.stat().st_mtime, dt.timezone.utc), "file mtime"


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split()).replace("|", "/")
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " ..."


def _link(path: Path, relative_to: Path) -> str:
    return f"[`{path.name}`]({Path(os.path.relpath(path, relative_to)).as_posix()})"


def render_all(directory: Path, out_dir: Path | None = None) -> str:
    """One markdown page of every ``trdq bench`` result under ``directory``: grouped by
    preset (sorted by name), each preset's latest run first, then its older runs; every
    other file listed at the end. Nothing in it depends on the machine or the hour it is
    generated on, so regenerating without new files gives the same bytes."""
    out_dir = out_dir or Path.cwd()
    runs: dict[str, list[tuple[dt.datetime, str, Path, dict, dict, str]]] = {}
    sidecars_used: set[Path] = set()
    others: list[tuple[Path, str]] = []
    for path in sorted(directory.iterdir()):
        if not path.is_file() or path.name.endswith(_SIDECAR):
            continue
        try:
            doc = json.loads(path.read_text()) if path.suffix == ".json" else None
        except ValueError:
            doc = None
        if not is_bench_result(doc):
            if isinstance(doc, dict) and "what" in doc:
                others.append((path, _one_line(doc["what"])))
            elif isinstance(doc, dict):
                others.append((path, "keys: " + ", ".join(f"`{k}`" for k in list(doc)[:6])))
            else:
                others.append((path, "not a JSON object (text or another format)"))
            continue
        side_path = _sidecar_path(path)
        side = json.loads(side_path.read_text()) if side_path else {}
        if side_path:
            sidecars_used.add(side_path)
        when, dated_by = _run_time(path, side)
        runs.setdefault(doc["preset"], []).append((when, path.name, path, doc, side, dated_by))
    for path in sorted(directory.glob("*" + _SIDECAR)):
        if path not in sidecars_used:
            others.append((path, "details sidecar whose results file was not kept"))

    intro = (
        f"Generated by `{RENDER_ALL_COMMAND}` from every `trdq bench --json` result under"
        " `docs/bench/` and its `FILE.details.json` sidecar; never edited by hand. To add a run,"
        " commit its JSON and sidecar under `docs/bench/` and re-run that command. Runs"
        " recorded before this page was generated whose JSON was not kept are in"
        " `docs/journal/benchmarks-2026-11.md`."
    )
    order = (
        "Presets in name order; within a preset the latest run first. A run's time is its"
        " sidecar's `utc` (when the run ended), else the date of the file's last commit. "
        + " ".join(ROW_LEGEND.split())
    )
    lines = [
        "# Benchmarks",
        "",
        textwrap.fill(intro, 92, break_on_hyphens=False, break_long_words=False),
        "",
        textwrap.fill(order, 92, break_on_hyphens=False, break_long_words=False),
        "",
        "| preset | device | latest run (UTC) | runs |",
        "|---|---|---|---|",
    ]
    for preset in sorted(runs):
        runs[preset].sort(key=lambda run: (run[0], run[1]), reverse=True)
        latest: dict[str, tuple[dt.datetime, int]] = {}
        for when, _, _, doc, _, _ in runs[preset]:
            first, count = latest.get(doc["device"], (when, 0))
            latest[doc["device"]] = (first, count + 1)
        for device, (when, count) in latest.items():
            lines.append(f"| `{preset}` | {device} | {when:%Y-%m-%d %H:%M} | {count} |")
    for preset in sorted(runs):
        lines += ["", f"## `{preset}`"]
        for index, (when, _, path, doc, side, dated_by) in enumerate(runs[preset]):
            source = _link(path, out_dir) + ("" if index else ", the latest run")
            if dated_by != "sidecar utc":
                source += f"; time: {dated_by}"
            lines.append(
                markdown_table(
                    doc,
                    side.get("notes", []),
                    side.get("versions") or {"torch": doc["torch"]},
                    when,
                    side.get("errors"),
                    step_profiles(side.get("rows", {})),
                    level=3,
                    source=source,
                ).rstrip("\n")
            )
    lines += ["", "## Other records", "", "Probes and files of other shapes under `docs/bench/`:", ""]
    lines += [f"- {_link(path, out_dir)}: {what}" for path, what in sorted(others)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trdq.tools.bench_report", description="Render docs/BENCHMARKS.md."
    )
    parser.add_argument("--all", required=True, metavar="DIR", help="directory of results")
    parser.add_argument("--out", metavar="FILE", help="write here (default: stdout)")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else None
    text = render_all(Path(args.all), out.parent if out else None)
    if out:
        out.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The BENCHMARKS.md table: every ratio is computed from the run's own rows."""

from __future__ import annotations

import datetime as dt

from trdq.tools.bench_report import markdown_table

VERSIONS = {"torch": "t", "triton": "-", "diffusers": "d", "torchao": "-"}


def _row(name, scope, latency_s, peak, weights):
    return {"name": name, "scope": scope, "latency_s": latency_s,
            "peak_memory_bytes": peak, "weight_bytes": weights}


def test_memory_ratios_against_bf16_eager_of_the_same_scope_and_batch():
    doc = {
        "preset": "p",
        "device": "GPU",
        "results": [
            _row("bf16-eager", "pipeline", 1.0, 12_000_000_000, 10_000_000_000),
            _row("w8a8-compile", "pipeline", 0.5, 4_000_000_000, 2_500_000_000),
            _row("bf16-eager@b4", "pipeline", 4.0, 20_000_000_000, 10_000_000_000),
            _row("w8a8-compile@b4", "pipeline", 2.0, 8_000_000_000, 2_500_000_000),
            _row("w8a8-compile", "denoiser_step", 0.1, 1_000_000_000, 600_000_000),
        ],
    }
    table = markdown_table(doc, ["note"], VERSIONS, dt.datetime(2026, 11, 27))
    lines = {line.split(" | ")[0] + " | " + line.split(" | ")[1]: line
             for line in table.splitlines() if line.startswith("| ") and "---" not in line}
    assert "| peak vs bf16-eager |" in table and "| weights vs bf16-eager |" in table
    # peak 12 / 4 GB, weights 10 / 2.5 GB; speed 1.0 / 0.5 s
    assert lines["| w8a8-compile | pipeline"].endswith(
        "| 2.00x | - | 2.00x | 4.00 | 3.00x | 2500.0 | 4.00x |"
    )
    # batch 4 compares with bf16-eager@b4, not with batch 1
    assert lines["| w8a8-compile@b4 | pipeline"].endswith("| 8.00 | 2.50x | 2500.0 | 4.00x |")
    # no bf16-eager row for this scope: no ratio rather than a wrong one
    assert lines["| w8a8-compile | denoiser_step"].endswith("| 1.00 | - | 600.0 | - |")


def test_profiled_rows_get_a_gpu_time_table_from_the_details():
    from trdq.tools.bench_report import step_profiles

    doc = {"preset": "p", "device": "GPU", "results": [
        _row("bf16-compile", "denoiser_step", 0.0337, 1, 1),
        _row("w8a8-compile", "denoiser_step", 0.0786, 1, 1),
    ]}
    rows = {
        "bf16-compile": {"profile@b1": {"ms_per_step_by_category": {"gemm": 12.59,
                                                                    "attention": 12.98},
                                        "total_ms": 25.57}},
        "w8a8-compile": {"prepare_s": 3.0,
                         "profile@b1": {"ms_per_step_by_category": {"rotate_quant": 5.72,
                                                                    "attention": 14.52},
                                        "total_ms": 20.24}},
    }
    profiles = step_profiles(rows)
    assert sorted(profiles) == ["bf16-compile b1", "w8a8-compile b1"]
    table = markdown_table(doc, ["n"], VERSIONS, dt.datetime(2026, 11, 27), profiles=profiles)
    assert "| row | gemm | attention | rotate_quant | GPU total |" in table
    assert "| bf16-compile b1 | 12.59 | 12.98 | - | 25.57 |" in table
    assert "| w8a8-compile b1 | - | 14.52 | 5.72 | 20.24 |" in table
    # no profile: no table
    assert "GPU kernel time" not in markdown_table(doc, ["n"], VERSIONS, dt.datetime(2026, 11, 27))


def _write_run(directory, name, preset, latency_s, utc=None, what_device="GPU"):
    import json

    doc = {"preset": preset, "device": what_device, "torch": "t",
           "results": [_row("bf16-eager", "denoiser_step", 2 * latency_s, 2, 2),
                       _row("w8a8-compile", "denoiser_step", latency_s, 1, 1)]}
    (directory / name).write_text(json.dumps(doc))
    if utc is not None:
        side = {"utc": utc, "notes": [f"run {name}"], "versions": VERSIONS}
        (directory / (name + ".details.json")).write_text(json.dumps(side))


def test_generated_page_puts_each_presets_latest_run_first_and_indexes_probes(tmp_path):
    import json
    import os

    from trdq.tools.bench_report import RENDER_ALL_COMMAND, main, render_all

    bench = tmp_path / "bench"
    bench.mkdir()
    # the older run sorts first by name, so the order below comes from the times
    _write_run(bench, "a-old.json", "p", 0.5, utc="2026-11-26T10:00:00+00:00")
    _write_run(bench, "b-new.json", "p", 0.25, utc="2026-11-27T09:30:00+00:00")
    _write_run(bench, "c-other.json", "q", 0.1, utc="2026-11-25T08:00:00+00:00")
    # no sidecar, outside git: dated by its mtime
    _write_run(bench, "d-nosidecar.json", "q", 0.1)
    stamp = dt.datetime(2026, 11, 28, 1, 2, tzinfo=dt.timezone.utc).timestamp()
    os.utime(bench / "d-nosidecar.json", (stamp, stamp))
    (bench / "probe.json").write_text(json.dumps({"what": "a kernel probe\n  in us", "x": 1}))
    (bench / "notes.txt").write_text("qkv 74.5\n")

    page = render_all(bench, tmp_path)
    assert RENDER_ALL_COMMAND in page and "never edited by hand" in page
    headings = [line for line in page.splitlines() if line.startswith("#")]
    assert headings == [
        "# Benchmarks",
        "## `p`",
        "### 2026-11-27 09:30 UTC - `p` on GPU",
        "### 2026-11-26 10:00 UTC - `p` on GPU",
        "## `q`",
        "### 2026-11-28 01:02 UTC - `q` on GPU",
        "### 2026-11-25 08:00 UTC - `q` on GPU",
        "## Other records",
    ]
    assert "| `p` | GPU | 2026-11-27 09:30 | 2 |" in page
    assert "From [`b-new.json`](bench/b-new.json), the latest run. torch t" in page
    assert "run b-new.json." in page  # the sidecar's notes
    assert "time: file mtime" in page
    # the ratio columns of the table renderer: w8a8 is twice as fast as bf16 eager
    assert "| w8a8-compile | denoiser_step | 250.0 | 2.00x |" in page
    index = page.split("## Other records", 1)[1]
    assert "- [`probe.json`](bench/probe.json): a kernel probe in us" in index
    assert "- [`notes.txt`](bench/notes.txt): not a JSON object" in index
    assert "b-new.json" not in index and ".details.json" not in index
    # stable: the same files give the same bytes, through the command too
    assert render_all(bench, tmp_path) == page
    out = tmp_path / "BENCHMARKS.md"
    assert main(["--all", str(bench), "--out", str(out)]) == 0
    assert out.read_text() == page


def test_runs_with_compiled_graphs_get_a_column_against_bf16_compile_with_graphs():
    """The GPU targets are ratios to bf16 + compile + CUDA graphs: a run that has the row
    shows that column; a run without it keeps the usual columns."""
    doc = {"preset": "p", "device": "GPU", "results": [
        _row("bf16-compile+cg", "denoiser_step", 0.5, 1, 1),
        _row("bf16-compile+cg+fa3attn", "denoiser_step", 0.4, 1, 1),
        _row("w8a8-compile+cg+fp8attn", "denoiser_step", 0.25, 1, 1),
    ]}
    table = markdown_table(doc, [], VERSIONS, dt.datetime(2026, 12, 6))
    header = next(line for line in table.splitlines() if line.startswith("| name"))
    assert "| vs bf16-compile+cg | vs fastest bf16 |" in header
    quant = next(line for line in table.splitlines() if line.startswith("| w8a8"))
    # vs bf16-eager, vs bf16-compile: absent rows; vs +cg 0.5 / 0.25; fastest bf16 0.4 / 0.25
    assert "| 250.0 | - | - | 2.00x | 1.60x |" in quant
    plain = {**doc, "results": doc["results"][1:]}
    assert "vs bf16-compile+cg" not in markdown_table(plain, [], VERSIONS)

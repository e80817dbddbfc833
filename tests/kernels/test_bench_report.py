"""The BENCHMARKS.md table: every ratio is computed from the run's own rows."""

from __future__ import annotations

import datetime as dt

from trdq.bench_report import markdown_table

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
    from trdq.bench_report import step_profiles

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

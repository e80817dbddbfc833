"""The notes under a ``trdq bench`` table that the run itself composes from its rows.

A table's numbers say little without how they were taken: the ``TRDQ_*`` settings the run
was given, which stage of a pipeline call sets its peak and takes its time
(``trdq.tools.bench_memory``), and the text encoder's own time under ``--profile``. These
read the details the runner recorded for each row (``{prefix}@bN`` keys) and return one
note each, or None when no row recorded any.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["stage_note", "text_encoder_note", "trdq_settings"]


def trdq_settings() -> str:
    """The ``TRDQ_*`` environment variables the run was given (kernel choices such as
    ``TRDQ_GEMM_TMA`` change what a row times), so a section says how it was run."""
    return ", ".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("TRDQ_"))


def _per_result(rows: dict[str, dict[str, Any]], prefix: str):
    """``(result name, value)`` of each row's ``{prefix}@bN`` detail, the name as in the
    table: the row, with ``@bN`` for batches other than 1."""
    for row, info in rows.items():
        for key, value in info.items():
            if key.startswith(prefix) and value:
                batch = key.removeprefix(prefix)
                yield (row if batch == "@b1" else row + batch), value


def stage_note(
    rows: dict[str, dict[str, Any]], prefix: str, title: str, decimals: int
) -> str | None:
    """One note listing each result's ``{prefix}@bN`` stage values, encode / denoise /
    decode."""
    entries = [
        f"{name}: "
        + " / ".join(f"{stages.get(s, float('nan')):.{decimals}f}"
                     for s in ("encode", "denoise", "decode"))
        for name, stages in _per_result(rows, prefix)
    ]
    if not entries:
        return None
    return f"{title}, encode / denoise / decode: " + "; ".join(entries)


def text_encoder_note(rows: dict[str, dict[str, Any]]) -> str | None:
    """One note listing each result's text-encoder wall / GPU ms (``--profile``)."""
    entries = [
        f"{name}: {ms['wall_ms']:.1f} / {ms['gpu_ms']:.1f}"
        for name, ms in _per_result(rows, "text_encoder_ms")
    ]
    if not entries:
        return None
    return ("`text_encoder` alone (CLIP where T5 is `text_encoder_2`), wall / GPU kernel ms "
            "(`--profile`): " + "; ".join(entries))

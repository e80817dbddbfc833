"""The ``trdq eval`` Markdown file (docs/QUALITY.md for the record): one section per model.

``model_section`` turns a report into one model's dated section (``quality_markdown``'s body,
headings one level down, between ``<!-- trdq-eval MODEL -->`` markers), and
``update_markdown`` replaces that model's section in the file, or appends it, keeping the
others. ``device_description`` is the machine the section says the run was on.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from trdq.eval.report import QualityReport, quality_markdown

__all__ = ["device_description", "model_section", "update_markdown"]

_SECTION = re.compile(
    r"<!-- trdq-eval (?P<model>\S+) -->\n.*?<!-- /trdq-eval (?P=model) -->\n", re.DOTALL
)
_PREAMBLE = (
    "# Quality of quantized generation\n\nWritten by `trdq eval` (trdq/tools/eval_cli.py): "
    "one section per model, replaced when that model is evaluated again.\n"
)


def device_description(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(torch.device(device))}, torch {torch.__version__}"
    from trdq.machine import cpu_isa, cpu_model

    # the ISA too: one model name (e.g. "AMD EPYC") covers CPUs with and without int8
    # dot-product instructions, which set the int8 GEMM's speed
    return (f"CPU {cpu_model()} ({cpu_isa()}), {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}")


def model_section(
    report: QualityReport, command: str, device: str, notes: Sequence[str], date: str | None = None
) -> str:
    """One model's dated section: quality_markdown's body with headings one level down."""
    body = quality_markdown([report], command, device=device, notes=notes, date=date)
    lines = body.splitlines()[1:]  # drop the document title
    lines = ["#" + line if line.startswith("#") else line for line in lines]
    return (
        f"<!-- trdq-eval {report.model} -->\n## {report.model}\n"
        + "\n".join(lines).rstrip("\n")
        + f"\n<!-- /trdq-eval {report.model} -->\n"
    )


def update_markdown(path: Path, section: str, model: str) -> None:
    """Replace ``model``'s section of ``path`` (or append it), keeping the others."""
    text = path.read_text() if path.exists() else _PREAMBLE
    for match in _SECTION.finditer(text):
        if match.group("model") == model:
            text = text[: match.start()] + section + text[match.end() :]
            break
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)

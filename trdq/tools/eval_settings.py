"""Which settings a ``trdq eval`` run evaluates, and in what order.

A setting is a QuantConfig preset name (with an optional attention suffix, ``+fp8attn``);
``fp`` always comes first, as its samples are the others' reference. ``--ablation w8a8``
expands to the chain that switches on one TR-DQ component at a time, then the faithful
preset; ``canonical_order`` sorts a run's rows the same way for the JSON and the Markdown.
"""

from __future__ import annotations

from collections.abc import Sequence

from trdq.nn.attention import split_attention_suffix

__all__ = [
    "ABLATION_SUFFIXES",
    "FAITHFUL_OF",
    "REFERENCE",
    "ablation_chain",
    "canonical_order",
    "expand_settings",
]

REFERENCE = "fp"
ABLATION_SUFFIXES = ("-minmax", "-rot", "-rot-search", "-rot-groups-search", "")
FAITHFUL_OF = {"w8a8": "faithful", "w4a8": "faithful-w4a8", "w6a6": "faithful-w6a6",
               "w4a4": "faithful-w4a4"}


def ablation_chain(base: str) -> list[str]:
    """``w8a8`` -> its ablation presets, least to most complete, then its faithful preset
    with one time range and as released (its time dimension is a weight copy per range)."""
    if base not in FAITHFUL_OF:
        raise ValueError(f"--ablation takes {' or '.join(FAITHFUL_OF)}, got {base!r}")
    faithful = FAITHFUL_OF[base]
    return [base + suffix for suffix in ABLATION_SUFFIXES] + [faithful + "-1range", faithful]


def expand_settings(quant: str | None, ablations: Sequence[str]) -> list[str]:
    """The ordered, de-duplicated settings: fp first, then --quant, then ablation chains."""
    from trdq.config import preset_names

    names = [REFERENCE]
    names += [q.strip() for q in (quant or "").split(",") if q.strip()]
    for entry in ablations:
        for base in (b.strip() for b in entry.split(",") if b.strip()):
            names += ablation_chain(base)
    known = set(preset_names())
    unknown = [n for n in names if split_attention_suffix(n)[0] not in known]
    if unknown:
        raise ValueError(f"unknown quant preset(s) {unknown}; known: {sorted(known)}")
    return list(dict.fromkeys(names))


def canonical_order(names: Sequence[str]) -> list[str]:
    """fp, then each ablation chain with its faithful preset, then the rest as given."""
    known = [REFERENCE, *(n for base in FAITHFUL_OF for n in ablation_chain(base))]
    rank = {name: i for i, name in enumerate(known)}
    return sorted(names, key=lambda n: (rank.get(n, len(known)), list(names).index(n)))

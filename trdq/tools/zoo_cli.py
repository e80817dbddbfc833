"""`trdq zoo build|train`: make the embedded pipelines."""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: trdq zoo build [--seed N] [--out DIR] [NAMES...] | trdq zoo train ...")
        return 0
    command, rest = argv[0], argv[1:]
    if command == "build":
        from trdq.zoo.build import main as build_main

        return build_main(rest)
    if command == "train":
        from trdq.tools.zoo_train import main as train_main

        return train_main(rest)
    print(f"unknown zoo command {command!r}", file=sys.stderr)
    return 2

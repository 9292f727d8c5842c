"""Command-line option types shared by several stages (kept free of heavy imports: the baseline stage
uses them without importing torch)."""

from __future__ import annotations

import argparse


def label_fraction_arg(text: str) -> float:
    """argparse type of --label-fraction: a number in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 < value <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text} is not in (0, 1]")
    return value

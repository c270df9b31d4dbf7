"""Plots are an extra (``pip install 'smoe[plots]'``): the commands that draw them get pyplot
here, or None with one note when matplotlib is not installed (the data files are written
either way)."""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["pyplot"]


def pyplot(what: str) -> Any:
    """matplotlib's pyplot on the file backend, or None (noted on stderr) without it."""
    try:
        import matplotlib
    except ModuleNotFoundError:
        print(f"note: {what} not drawn: matplotlib is not installed "
              "(pip install 'smoe[plots]')", file=sys.stderr)
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt

"""Process-wide torch settings, set by the CLI only (torch stays inside ``smoelib.policy``)."""

from __future__ import annotations

import torch

__all__ = ["set_threads"]


def set_threads(n: int) -> None:
    """Use ``n`` CPU threads for torch's intra-op work in this process."""
    torch.set_num_threads(n)

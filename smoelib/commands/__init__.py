"""Subcommands of ``smoe`` that belong to no single sub-package."""

"""The error hierarchy every sMoE module raises.

``SmoeError`` is the root. Bad input is a ``ValueError`` (``PipelineError``, ``ConfigError``)
and names the file, the object and the field. Failures talking to the outside world are either
``TransientError`` (retry with capped backoff) or ``PermanentError`` (surface it, keep the last
good decision). Library exceptions are chained with ``raise ... from e``.
"""

from __future__ import annotations

__all__ = [
    "SmoeError",
    "PipelineError",
    "ConfigError",
    "TransientError",
    "PermanentError",
    "Problem",
    "EXIT_OK",
    "EXIT_FAILED",
    "EXIT_BAD_INPUT",
    "EXIT_INTERRUPTED",
]

from dataclasses import dataclass

EXIT_OK = 0
EXIT_FAILED = 1
"""The command ran and something it tried failed (``smoe plan --apply``: a patch was refused)."""
EXIT_BAD_INPUT = 2
"""Bad input (a pipeline, config, trace, checkpoint or decision file): one line per problem."""
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input file.

    ``where`` is the object and field path (``stages[2].experts``), ``line`` the 1-based line of
    the YAML node when the parser gave one.
    """

    where: str
    message: str
    line: int | None = None

    def render(self, source: str | None) -> str:
        location = source or "<mapping>"
        if self.line is not None:
            location = f"{location}:{self.line}"
        where = f" {self.where}:" if self.where else ""
        return f"{location}:{where} {self.message}"


class SmoeError(Exception):
    """Root of every error sMoE raises on purpose."""


class _InputError(SmoeError, ValueError):
    """Bad input: carries every problem found, one line each."""

    kind = "input"

    def __init__(self, problems: list[Problem] | tuple[Problem, ...], *, source: str | None = None):
        # in file order: a reader fixes them top to bottom (problems without a line go last)
        self.problems = tuple(sorted(problems, key=lambda p: (p.line is None, p.line or 0)))
        self.source = source
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        """One line per problem, each naming the file, the object and field, and the line."""
        return [p.render(self.source) for p in self.problems]


class PipelineError(_InputError):
    """A ``pipeline.yml`` (or the mapping given in its place) is not a valid pipeline."""


class ConfigError(_InputError):
    """A ``config.yaml``, a checkpoint, a trace or a decision file is not valid."""


class TransientError(SmoeError):
    """A failure that may pass: a timeout, a 5xx, a 409 conflict. Retry with backoff."""


class PermanentError(SmoeError):
    """A failure that will not pass by retrying: a 403, a 404, a schema mismatch."""

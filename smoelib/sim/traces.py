"""Request arrivals: replay of an Azure LLM inference trace CSV, and the synthetic traces.

A trace is aligned arrays: arrival times (seconds from the trace start, sorted), context tokens
and generated tokens per request (``GeneratedTokens``; None when a CSV has no such column,
which a pipeline that decodes refuses), and each request's task class (index into
:data:`TASKS`; the routing popularity differs by class). Built-in names (DESIGN.md,
"Traces"): ``conv`` (the packaged real trace), ``conv-train`` (its minutes 0-40),
``conv-eval`` (minutes 40-58, shifted to start at 0), and the synthetic families (below),
generated from a seed (seeds below 1000 for training and tuning, 1000 and above for evaluation).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from smoelib.errors import ConfigError, Problem

__all__ = ["Trace", "BUILTIN_TRACES", "CONV_FILE", "load_trace", "read_trace_csv", "scale_trace"]

CONV_FILE = "AzureLLMInferenceTrace_conv.csv"
_HEADER = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
_TRAIN_S = (0.0, 2400.0)
_EVAL_S = (2400.0, 3480.0)
BUILTIN_TRACES = ("conv", "conv-train", "conv-eval", "poisson", "bursty", "diurnal", "spike")


TASKS = ("chat", "code", "agent")
"""Task classes of requests; a replayed trace without a class column is all chat."""


@dataclass(frozen=True)
class Trace:
    """Arrivals: ``times_s`` (float64, seconds from start, non-decreasing), ``tokens`` (int64
    context tokens per request), ``generated`` (int64 generated tokens, or None when unknown),
    ``task`` (int8 class per request, None: all chat); ``duration_s`` the span covered."""

    name: str
    times_s: np.ndarray
    tokens: np.ndarray
    duration_s: float
    generated: np.ndarray | None = None
    task: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.times_s.size)

    def select(self, index, *, name: str | None = None, times_s: np.ndarray | None = None,
               duration_s: float | None = None) -> Trace:
        """The requests at ``index`` (a slice, mask or index array), optionally with new
        times and span."""
        pick = lambda a: None if a is None else a[index]  # noqa: E731
        return Trace(name or self.name, self.times_s[index] if times_s is None else times_s,
                     self.tokens[index], self.duration_s if duration_s is None else duration_s,
                     pick(self.generated), pick(self.task))

    def window(self, start_s: float, end_s: float) -> Trace:
        """The requests in ``[start_s, end_s)``, shifted so ``start_s`` becomes 0."""
        lo, hi = np.searchsorted(self.times_s, [start_s, end_s], side="left")
        return self.select(slice(lo, hi), times_s=self.times_s[lo:hi] - start_s,
                           duration_s=end_s - start_s)

    def rate_cv(self) -> float:
        """Coefficient of variation of inter-arrival times (1 for a Poisson process)."""
        gaps = np.diff(self.times_s)
        return float(gaps.std() / gaps.mean()) if gaps.size > 1 and gaps.mean() > 0 else 0.0


def read_trace_csv(path: str | Path) -> Trace:
    """Read a CSV in the Azure LLM inference trace format (``TIMESTAMP,ContextTokens,...``).

    Raises:
        ConfigError: missing or empty file, wrong header, a bad timestamp, unsorted rows,
            negative or non-integer tokens; each problem names the file and row.
    """
    path = Path(path)
    name = str(path)
    if not path.is_file():
        raise ConfigError([Problem("", "trace file not found")], source=name)
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    return _parse(rows, name=name, label=path.stem)


def _parse(rows: list[list[str]], *, name: str, label: str) -> Trace:
    def fail(line: int | None, message: str) -> ConfigError:
        where = f"row {line - 1}" if line else ""
        return ConfigError([Problem(where, message, line)], source=name)

    if not rows:
        raise fail(None, "empty trace file: expected a header TIMESTAMP,ContextTokens,...")
    header = tuple(c.strip() for c in rows[0])
    if header[:2] != _HEADER[:2]:
        raise fail(1, f"header must start with TIMESTAMP,ContextTokens; got {','.join(header)}")
    body = rows[1:]
    if not body:
        raise fail(None, "trace has a header but no requests")
    has_gen = len(header) > 2 and header[2] == _HEADER[2]
    stamps, tokens, generated = [], [], []
    for i, row in enumerate(body, start=2):
        if len(row) < 2:
            raise fail(i, f"expected at least 2 columns, got {len(row)}")
        text = row[0].strip()
        try:
            stamps.append(np.datetime64(text[:26].replace(" ", "T"), "us"))
        except ValueError:
            raise fail(i, f"bad TIMESTAMP {text!r} (expected YYYY-MM-DD HH:MM:SS.ffffff)"
                       ) from None
        try:
            tok = int(row[1])
        except ValueError:
            raise fail(i, f"ContextTokens must be an integer, got {row[1]!r}") from None
        if tok < 0:
            raise fail(i, f"ContextTokens must be >= 0, got {tok}")
        tokens.append(tok)
        if has_gen:
            if len(row) < 3:
                raise fail(i, f"expected 3 columns (GeneratedTokens), got {len(row)}")
            try:
                gen = int(row[2])
            except ValueError:
                raise fail(i, f"GeneratedTokens must be an integer, got {row[2]!r}") from None
            if gen < 0:
                raise fail(i, f"GeneratedTokens must be >= 0, got {gen}")
            generated.append(gen)
    t = np.array(stamps, dtype="datetime64[us]")
    if np.isnat(t).any():
        raise fail(int(np.flatnonzero(np.isnat(t))[0]) + 2, "bad TIMESTAMP (NaT)")
    back = np.flatnonzero(t[1:] < t[:-1])
    if back.size:
        raise fail(int(back[0]) + 3, "rows are not sorted by TIMESTAMP")
    secs = (t - t[0]).astype(np.int64) / 1e6
    return Trace(label, secs, np.asarray(tokens, dtype=np.int64), float(secs[-1]) + 1.0,
                 np.asarray(generated, dtype=np.int64) if has_gen else None)


@cache
def _conv() -> Trace:
    ref = Path(__file__).resolve().parent.parent / "data" / CONV_FILE
    with ref.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    return _parse(rows, name=f"smoelib/data/{CONV_FILE}", label="conv")


def scale_trace(trace: Trace, *, time_scale: float = 1.0, rate_scale: float = 1.0,
                rng: np.random.Generator | None = None) -> Trace:
    """Stretch time by ``time_scale`` (2 = half the rate, slower dynamics) and multiply the
    rate by ``rate_scale`` on the same time axis (thinning below 1, superposing jittered copies
    above 1). ``rng`` is needed when ``rate_scale != 1``."""
    if time_scale <= 0 or rate_scale <= 0:
        raise ConfigError([Problem("trace", "time_scale and rate_scale must be > 0")])
    times = trace.times_s * time_scale
    duration = trace.duration_s * time_scale
    if rate_scale == 1.0:
        return trace.select(slice(None), times_s=times, duration_s=duration)
    if rate_scale != 1.0:
        if rng is None:
            raise ValueError("rate scaling needs an rng")
        copies = np.floor(rate_scale) + (rng.random(times.size) < rate_scale % 1.0)
        idx = np.repeat(np.arange(times.size), copies.astype(np.int64))
        first = np.r_[True, idx[1:] != idx[:-1]]
        gap = np.diff(times, append=duration)[idx]
        times = times[idx] + np.where(first, 0.0, rng.random(idx.size) * gap)
        order = np.argsort(times, kind="stable")
    return trace.select(idx[order], times_s=times[order], duration_s=duration)


def load_trace(name: str, *, seed: int, duration_s: float, rate_per_s: float = 5.5,
               time_scale: float = 1.0, rate_scale: float = 1.0) -> Trace:
    """A built-in trace by name, or a CSV by path, cut to ``duration_s`` and scaled.

    Synthetic traces are generated from ``seed`` with mean rate about ``rate_per_s`` and
    context tokens resampled from the conv trace. Replays repeat from the start when
    ``duration_s`` is longer than the trace.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7041]))
    if name in ("conv", "conv-train", "conv-eval"):
        base = _conv()
        span = {"conv": (0.0, base.duration_s), "conv-train": _TRAIN_S, "conv-eval": _EVAL_S}
        base = base.window(*span[name]).select(slice(None), name=name)
    elif name in _SYNTHETIC:
        base = _SYNTHETIC[name](rng, duration_s / time_scale, rate_per_s)
    else:
        base = read_trace_csv(name)
    scaled = scale_trace(base, time_scale=time_scale, rate_scale=rate_scale, rng=rng)
    return _fit(scaled, duration_s)


def _fit(trace: Trace, duration_s: float) -> Trace:
    """Cut to ``duration_s``, repeating the trace when it is shorter."""
    if trace.duration_s <= 0 or len(trace) == 0:
        return trace.select(slice(0, 0), duration_s=duration_s)
    reps = int(np.ceil(duration_s / trace.duration_s))
    times = np.concatenate([trace.times_s + k * trace.duration_s for k in range(reps)])
    index = np.tile(np.arange(len(trace)), reps)
    keep = times < duration_s
    return trace.select(index[keep], times_s=times[keep], duration_s=float(duration_s))


# ---- synthetic traces ------------------------------------------------------------------
def _requests(rng: np.random.Generator, name: str, times: np.ndarray, duration: float
              ) -> Trace:
    """Requests at ``times`` whose (context, generated) pairs are resampled from conv."""
    conv = _conv()
    rows = rng.integers(0, len(conv), size=times.size)
    return Trace(name, times, conv.tokens[rows], duration, conv.generated[rows])


def _piecewise_poisson(rng: np.random.Generator, edges: np.ndarray, rates: np.ndarray
                       ) -> np.ndarray:
    """Arrival times of a Poisson process with rate ``rates[i]`` on ``[edges[i], edges[i+1])``."""
    widths = np.diff(edges)
    counts = rng.poisson(rates * widths)
    starts = np.repeat(edges[:-1], counts)
    times = starts + rng.random(starts.size) * np.repeat(widths, counts)
    return np.sort(times, kind="stable")


def _poisson(rng: np.random.Generator, duration: float, rate: float) -> Trace:
    times = _piecewise_poisson(rng, np.array([0.0, duration]), np.array([rate]))
    return _requests(rng, "poisson", times, duration)


def _bursty(rng: np.random.Generator, duration: float, rate: float) -> Trace:
    """Markov-modulated Poisson: a calm state (40 s mean sojourn) at 0.3x the mean rate and a
    burst state (5 s mean) at 6.1x, so the mean stays ``rate`` and the CV is well above 1."""
    lows, highs, mean_low, mean_high = 0.3 * rate, 6.1 * rate, 40.0, 5.0
    edges, rates, t, burst = [0.0], [], 0.0, False
    while t < duration:
        t += rng.exponential(mean_high if burst else mean_low)
        rates.append(highs if burst else lows)
        edges.append(min(t, duration))
        burst = not burst
    times = _piecewise_poisson(rng, np.asarray(edges), np.asarray(rates))
    return _requests(rng, "bursty", times, duration)


def _diurnal(rng: np.random.Generator, duration: float, rate: float) -> Trace:
    """A compressed day: rate(t) = rate x (1 + 0.8 sin(2 pi t / 1800 s)), in 1 s steps."""
    edges = np.arange(0.0, duration + 1.0, 1.0).clip(max=duration)
    mids = 0.5 * (edges[1:] + edges[:-1])
    rates = rate * (1.0 + 0.8 * np.sin(2 * np.pi * mids / 1800.0))
    times = _piecewise_poisson(rng, edges, rates)
    return _requests(rng, "diurnal", times, duration)


def _spike(rng: np.random.Generator, duration: float, rate: float) -> Trace:
    """Steady ``rate`` with one 5x spike lasting 60 s, starting at a seeded time in the middle
    half of the trace."""
    start = duration * (0.25 + 0.5 * rng.random())
    edges = np.array([0.0, start, min(start + 60.0, duration), duration])
    times = _piecewise_poisson(rng, edges, np.array([rate, 5 * rate, rate]))
    return _requests(rng, "spike", times, duration)


_SYNTHETIC = {"poisson": _poisson, "bursty": _bursty, "diurnal": _diurnal, "spike": _spike}

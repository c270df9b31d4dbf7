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
SYNTHETIC = ("poisson", "bursty", "diurnal", "diurnal-day", "weekly", "spike", "onoff")
"""Synthetic families (load that moves; docs/simulator.md "Traces"). Each takes a token mix
after a colon: ``bursty:code``; without one, the mix follows the task classes (below)."""
MIXES = ("mixed", "conv", "code", "agent")
BUILTIN_TRACES = ("conv", "conv-train", "conv-eval", *SYNTHETIC)


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

    def count(line: int, row: list[str], col: int) -> int:
        try:
            n = int(row[col])
        except ValueError:
            raise fail(line, f"{_HEADER[col]} must be an integer, got {row[col]!r}") from None
        if n < 0:
            raise fail(line, f"{_HEADER[col]} must be >= 0, got {n}")
        return n

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
        tokens.append(count(i, row, 1))
        if has_gen:
            if len(row) < 3:
                raise fail(i, f"expected 3 columns (GeneratedTokens), got {len(row)}")
            generated.append(count(i, row, 2))
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


COPY_SPREAD_S = 10.0  # the window a superposed copy of a request is shifted within


def scale_trace(trace: Trace, *, time_scale: float = 1.0, rate_scale: float = 1.0,
                rng: np.random.Generator | None = None) -> Trace:
    """Stretch time by ``time_scale`` (2 = half the rate, slower dynamics) and multiply the
    rate by ``rate_scale`` on the same time axis (thinning below 1, superposing copies above 1,
    each shifted by a uniform time in ``[0, COPY_SPREAD_S)``, wrapped inside the trace: the
    rate over longer spans is the trace's, while the copies arrive as independent users would,
    not clustered in the original's inter-arrival gaps, which made a 30x replay's
    inter-arrival CV 1.7 where the trace's is 1.0). ``rng`` is needed when
    ``rate_scale != 1``."""
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
        shift = np.where(first, 0.0, rng.random(idx.size) * min(COPY_SPREAD_S, duration))
        times = (times[idx] + shift) % duration if duration > 0 else times[idx]
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
    elif name.split(":")[0] in _SYNTHETIC:
        family, _, mix = name.partition(":")
        if mix and mix not in MIXES:
            raise ConfigError([Problem("trace", f"unknown token mix {mix!r} in {name!r}; "
                                               f"expected one of {', '.join(MIXES)}")])
        times, day_s = _SYNTHETIC[family](rng, duration_s / time_scale, rate_per_s)
        base = _requests(rng, name, times, duration_s / time_scale, mix or "mixed", day_s)
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
CODE_TOKENS = {"context": (1500.0, 0.9), "generated": (13.0, 1.0)}
"""Coding-assistant requests, lognormal (median, sigma): prompt median 1,500 tokens, output
median 13 (Splitwise, ISCA 2024, the Azure 2023 code trace: short outputs, tens of tokens)."""
AGENT_TOKENS = {"context": (10000.0, 0.5), "generated": (150.0, 0.8)}
"""Agent and retrieval requests: contexts of about 10 k tokens (retrieved documents, tool
output), outputs of a few hundred (assumptions within the published ranges; research note
"workload", 4)."""


def task_mix(t_s: np.ndarray, day_s: float) -> np.ndarray:
    """Shares of the task classes (chat, code, agent) at ``t_s`` over a day of ``day_s``: each
    class peaks at its own hour (chat in the evening, code in working hours, agents between),
    so the traffic's mix, and with it the hot experts, moves along the day. Shape (n, 3)."""
    phase = 2 * np.pi * np.asarray(t_s, float)[:, None] / day_s
    w = 1.0 + 0.8 * np.sin(phase + np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3]))
    return w / w.sum(axis=1, keepdims=True)


def _lognormal(rng: np.random.Generator, spec: tuple[float, float], n: int) -> np.ndarray:
    median, sigma = spec
    return np.maximum(np.round(median * np.exp(sigma * rng.standard_normal(n))), 1).astype(
        np.int64)


def _requests(rng: np.random.Generator, name: str, times: np.ndarray, duration: float,
              mix: str, day_s: float) -> Trace:
    """Requests at ``times``. ``mix``: ``conv`` resamples (context, generated) pairs from the
    conv trace, ``code`` and ``agent`` draw from their token statistics, ``mixed`` draws each
    request's task class from :func:`task_mix` and its tokens from that class's statistics
    (chat: conv)."""
    n = times.size
    if mix == "mixed":
        shares = task_mix(times, day_s)
        task = (rng.random(n)[:, None] > np.cumsum(shares, axis=1)).sum(1).astype(np.int8)
    else:
        task = np.full(n, {"conv": 0, "code": 1, "agent": 2}[mix], np.int8)
    conv = _conv()
    rows = rng.integers(0, len(conv), size=n)
    context, generated = conv.tokens[rows].copy(), conv.generated[rows].copy()
    for cls, spec in ((1, CODE_TOKENS), (2, AGENT_TOKENS)):
        m = task == cls
        context[m] = _lognormal(rng, spec["context"], int(m.sum()))
        generated[m] = _lognormal(rng, spec["generated"], int(m.sum()))
    return Trace(name, times, context, duration, generated, task)


def _piecewise_poisson(rng: np.random.Generator, edges: np.ndarray, rates: np.ndarray
                       ) -> np.ndarray:
    """Arrival times of a Poisson process with rate ``rates[i]`` on ``[edges[i], edges[i+1])``."""
    widths = np.diff(edges)
    counts = rng.poisson(rates * widths)
    starts = np.repeat(edges[:-1], counts)
    times = starts + rng.random(starts.size) * np.repeat(widths, counts)
    return np.sort(times, kind="stable")


def _profile(rng, duration: float, rate: float, shape) -> np.ndarray:
    """A Poisson process whose rate is ``rate x shape(t)`` (``shape`` of mean about 1), in 1 s
    steps."""
    edges = np.arange(0.0, duration + 1.0, 1.0).clip(max=duration)
    mids = 0.5 * (edges[1:] + edges[:-1])
    return _piecewise_poisson(rng, edges, rate * shape(mids))


_COMPRESSED_DAY_S = 1800.0


def _poisson(rng, duration: float, rate: float):
    return _piecewise_poisson(rng, np.array([0.0, duration]), np.array([rate])), \
        _COMPRESSED_DAY_S


def _bursty(rng, duration: float, rate: float):
    """Markov-modulated Poisson: a calm state (40 s mean sojourn) at 0.3x the mean rate and a
    burst state (5 s mean) at 6.6x, so the mean stays ``rate`` ((40 x 0.3 + 5 x 6.6) / 45 = 1)
    and the CV is well above 1."""
    lows, highs, mean_low, mean_high = 0.3 * rate, 6.6 * rate, 40.0, 5.0
    edges, rates, t, burst = [0.0], [], 0.0, False
    while t < duration:
        t += rng.exponential(mean_high if burst else mean_low)
        rates.append(highs if burst else lows)
        edges.append(min(t, duration))
        burst = not burst
    return _piecewise_poisson(rng, np.asarray(edges), np.asarray(rates)), _COMPRESSED_DAY_S


def _diurnal(rng, duration: float, rate: float):
    """A compressed day of 30 min: rate x (1 + 0.45 sin(2 pi t / 1800 s)), 2.6x from trough to
    peak (real traffic: 2-3x within a day)."""
    day = _COMPRESSED_DAY_S
    return _profile(rng, duration, rate, lambda t: 1.0 + 0.45 * np.sin(2 * np.pi * t / day)), day


def _diurnal_day(rng, duration: float, rate: float):
    """A real-time day (86,400 s period), starting at a seeded hour: the same 2.6x swing over
    24 h, so a short episode sees a slow trend."""
    day, start = 86400.0, float(rng.random()) * 86400.0
    return _profile(rng, duration, rate, lambda t: 1.0 + 0.45 * np.sin(
        2 * np.pi * (t + start) / day)), day


def _weekly(rng, duration: float, rate: float):
    """A compressed week of seven 30-min days: the diurnal swing on weekdays, weekend days at
    0.4x (DynamoLLM's Azure 2024 conv week: 2-3x within a day, about 5x over the week)."""
    day = _COMPRESSED_DAY_S

    def shape(t):
        weekend = (t // day) % 7 >= 5
        return (1.0 + 0.45 * np.sin(2 * np.pi * t / day)) * np.where(weekend, 0.4, 1.24)

    return _profile(rng, duration, rate, shape), day


def _spike(rng, duration: float, rate: float):
    """Steady ``rate`` with one 5x spike lasting 60 s, starting at a seeded time in the middle
    half of the trace."""
    start = duration * (0.25 + 0.5 * rng.random())
    edges = np.array([0.0, start, min(start + 60.0, duration), duration])
    return _piecewise_poisson(rng, edges, np.array([rate, 5 * rate, rate])), _COMPRESSED_DAY_S


def _onoff(rng, duration: float, rate: float):
    """Heavy-tailed on-off traffic, as coding assistants send: idle gaps of minutes (Pareto,
    shape 1.5, at least 30 s) and bursts of 2-20 s (lognormal) at the rate that keeps the mean
    ``rate``; the inter-arrival CV is 10 or more."""
    edges, rates, t = [0.0], [], 0.0
    on_mean, off_mean = 6.0, 90.0
    burst_rate = rate * (on_mean + off_mean) / on_mean
    while t < duration:
        off = 30.0 * (1.0 + rng.pareto(1.5))
        on = float(np.clip(rng.lognormal(np.log(5.0), 0.6), 2.0, 20.0))
        t_on = min(t + off, duration)
        edges += [t_on, min(t_on + on, duration)]
        rates += [0.0, burst_rate * rng.lognormal(0.0, 0.5)]
        t = t_on + on
    return _piecewise_poisson(rng, np.asarray(edges), np.asarray(rates)), _COMPRESSED_DAY_S


_SYNTHETIC = {"poisson": _poisson, "bursty": _bursty, "diurnal": _diurnal,
              "diurnal-day": _diurnal_day, "weekly": _weekly, "spike": _spike,
              "onoff": _onoff}

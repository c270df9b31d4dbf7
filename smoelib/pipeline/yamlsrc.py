"""Load YAML with the line of every key, so errors can name where a problem is.

Used by the pipeline and the config loader. Only safe YAML is accepted (no Python tags); the
loader refuses anything that is not a regular file (a FIFO would block, ``/dev/zero`` never
ends), reads at most ``MAX_BYTES``, stops composing past ``MAX_NODES`` nodes (before the
Python objects of a huge document exist), refuses duplicate keys and documents that expand past
``MAX_NODES`` nodes through aliases.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from smoelib.errors import Problem

MAX_BYTES = 4 * 1024 * 1024
"""Largest file accepted, bytes. A pipeline of 100 stages is a few kB."""

MAX_NODES = 100_000
"""Largest number of YAML nodes, as composed and after alias expansion (the deepseek-v3 scale
pipeline has about 2,000; a guard against huge documents and alias bombs)."""


Path_ = tuple[str | int, ...]


@dataclass
class Source:
    """A parsed YAML document and where each of its keys stood.

    ``lines`` maps a path of keys and list indices to the 1-based line of that entry.
    """

    data: Any
    name: str | None = None
    lines: dict[Path_, int] = field(default_factory=dict)

    def line(self, path: Path_) -> int | None:
        """Line of ``path`` or of its nearest ancestor that has one."""
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return None


class YamlProblem(Exception):
    """Raised by :func:`load` with the one problem that stopped parsing."""

    def __init__(self, problem: Problem):
        super().__init__(problem.message)
        self.problem = problem


def load(config: str | Path | Mapping[str, Any]) -> Source:
    """Parse a path (or accept an already-parsed mapping) into a :class:`Source`.

    Raises:
        YamlProblem: the file is missing, not a regular file, too large, not UTF-8, not YAML,
            not safe YAML, or too many nodes.
    """
    if isinstance(config, Mapping):
        return Source(data=config, name=None)
    name = str(config)
    raw = read_regular_file(config, limit=MAX_BYTES)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise YamlProblem(Problem("", f"not UTF-8 text (byte {e.start})")) from None
    source = parse_text(text)
    source.name = name
    return source


def read_regular_file(path: str | Path, *, limit: int, what: str = "file") -> bytes:
    """The bytes of ``path``: a regular file only (checked before it is opened), at most
    ``limit`` bytes.

    Raises:
        YamlProblem: missing, a directory, not a regular file, unreadable or over ``limit``.
    """
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            raise YamlProblem(Problem("", "is a directory, not a file"))
        if not stat.S_ISREG(st.st_mode):
            raise YamlProblem(Problem("", f"not a regular {what} (a FIFO, a device or a "
                                          "socket is never read)"))
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise YamlProblem(Problem("", "no such file")) from None
    except OSError as e:
        raise YamlProblem(Problem("", f"cannot read: {e.strerror}")) from None
    if len(data) > limit:
        raise YamlProblem(Problem("", f"larger than {limit} bytes: not read"))
    return data


class _BoundedLoader(yaml.SafeLoader):
    """The safe loader, refusing to compose more than ``MAX_NODES`` nodes."""

    composed = 0

    def compose_node(self, parent, index):  # noqa: ANN001 - PyYAML's signature
        self.composed += 1
        if self.composed > MAX_NODES:
            raise YamlProblem(Problem("", f"document has more than {MAX_NODES} nodes"))
        return super().compose_node(parent, index)


def parse_text(text: str) -> Source:
    """Parse YAML text, recording the line of every mapping key and list item."""
    if "\x00" in text:
        raise YamlProblem(Problem("", "not a text file (contains NUL bytes)"))
    loader = None
    try:
        loader = _BoundedLoader(text)
        node = loader.get_single_node()
        source = Source(data=None)
        if node is not None:
            source.data = _Converter(loader, source.lines).convert(node, ())
        return source
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else None
        message = e.problem or e.context or "invalid YAML"
        raise YamlProblem(Problem("", f"YAML syntax error: {message}", line)) from None
    except yaml.YAMLError as e:
        message = " ".join(str(e).split())
        raise YamlProblem(Problem("", f"YAML error: {message}")) from None
    except RecursionError:
        raise YamlProblem(Problem("", "YAML is nested too deeply")) from None
    finally:
        if loader is not None:
            loader.dispose()


class _Converter:
    def __init__(self, loader: yaml.SafeLoader, lines: dict[Path_, int]):
        self.loader = loader
        self.lines = lines
        self.count = 0

    def convert(self, node: yaml.Node, path: Path_) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise YamlProblem(Problem("", f"document expands past {MAX_NODES} nodes"))
        if isinstance(node, yaml.MappingNode):
            self.loader.flatten_mapping(node)
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = self.loader.construct_object(key_node, deep=True)
                if not isinstance(key, str | int | float | bool) and key is not None:
                    raise YamlProblem(
                        Problem(_render(path), "mapping keys must be scalars",
                                key_node.start_mark.line + 1))
                if key in out:
                    raise YamlProblem(
                        Problem(_render((*path, key)), "duplicate key",
                                key_node.start_mark.line + 1))
                self.lines[(*path, key)] = key_node.start_mark.line + 1
                out[key] = self.convert(value_node, (*path, key))
            return out
        if isinstance(node, yaml.SequenceNode):
            items = []
            for i, item in enumerate(node.value):
                self.lines[(*path, i)] = item.start_mark.line + 1
                items.append(self.convert(item, (*path, i)))
            return items
        return self.loader.construct_object(node, deep=True)


def _render(path: Path_) -> str:
    out = ""
    for part in path:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


render_path = _render

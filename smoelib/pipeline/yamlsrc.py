"""Load YAML with the line of every key, so errors can name where a problem is.

Used by the pipeline and the config loader. Only safe YAML is accepted (no Python tags); the
loader refuses duplicate keys, files over ``MAX_BYTES`` and documents that expand past
``MAX_NODES`` nodes through aliases.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from smoelib.errors import Problem

MAX_BYTES = 4 * 1024 * 1024
"""Largest file accepted, bytes. A pipeline of 100 stages is a few kB."""

MAX_NODES = 1_000_000
"""Largest number of YAML nodes after alias expansion (a guard against alias bombs)."""


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
        YamlProblem: the file is missing, too large, not UTF-8, not YAML, or not safe YAML.
    """
    if isinstance(config, Mapping):
        return Source(data=config, name=None)
    path = Path(config)
    name = str(config)
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise YamlProblem(Problem("", f"file is {size} bytes; the limit is {MAX_BYTES}"))
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise YamlProblem(Problem("", "no such file")) from None
    except IsADirectoryError:
        raise YamlProblem(Problem("", "is a directory, not a file")) from None
    except UnicodeDecodeError as e:
        raise YamlProblem(Problem("", f"not UTF-8 text (byte {e.start})")) from None
    except OSError as e:
        raise YamlProblem(Problem("", f"cannot read: {e.strerror}")) from None
    source = parse_text(text)
    source.name = name
    return source


def parse_text(text: str) -> Source:
    """Parse YAML text, recording the line of every mapping key and list item."""
    if "\x00" in text:
        raise YamlProblem(Problem("", "not a text file (contains NUL bytes)"))
    loader = None
    try:
        loader = yaml.SafeLoader(text)
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

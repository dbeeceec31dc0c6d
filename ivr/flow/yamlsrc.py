"""YAML loading that remembers where every value came from.

Flow files are edited by people, so every error must name ``file:line:col``.
PyYAML's composer gives us nodes with marks; we turn them into plain Python
data and a map from a value's path (a tuple of keys and indices) to its
position. Hostile input is bounded: file size, nesting depth, number of values
(alias bombs expand lazily, so counting visits stops them), duplicate keys.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from typing import Any

import yaml

MAX_BYTES = 2 * 1024 * 1024
MAX_DEPTH = 48
MAX_VALUES = 50_000  # the demo flow has about 700

Path = tuple[Any, ...]


@dataclass(frozen=True)
class Pos:
    line: int  # 1-based
    col: int  # 1-based


@dataclass
class Source:
    """Parsed YAML data plus positions of values (``values``) and keys (``keys``)."""

    data: Any
    values: dict[Path, Pos] = field(default_factory=dict)
    keys: dict[Path, Pos] = field(default_factory=dict)

    def pos(self, path: Path, *, key: bool = False) -> Pos:
        """The best position for ``path``: the exact one, or the nearest parent's."""
        table = self.keys if key else self.values
        p = tuple(path)
        while p:
            if p in table:
                return table[p]
            if p in self.values:
                return self.values[p]
            p = p[:-1]
        return self.values.get((), Pos(1, 1))


class YamlError(Exception):
    def __init__(self, message: str, pos: Pos):
        super().__init__(message)
        self.message = message
        self.pos = pos


class _Loader(yaml.SafeLoader):
    """SafeLoader: no Python object tags, ever."""


_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"),
         (b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16"))


def _wide_encoding(data: bytes) -> str | None:
    """``UTF-16``/``UTF-32`` when ``data`` is in one of them (BOM, or NUL in every other byte)."""
    for bom, name in _BOMS:
        if data.startswith(bom):
            return name
    head = data[:512]
    if len(head) >= 4 and (head[0::2].count(0) > len(head) // 4 or head[1::2].count(0) > len(head) // 4):
        return "UTF-16 (no byte order mark)"
    return None


#: Tags a flow file may carry (explicitly or, as YAML resolves plain values, implicitly).
_SAFE_TAGS = frozenset("tag:yaml.org,2002:" + name for name in
                       ("map", "seq", "str", "int", "float", "bool", "null", "timestamp", "merge", "value"))


def _check_tag(node: yaml.Node) -> None:
    if node.tag not in _SAFE_TAGS:
        shown = node.tag.replace("tag:yaml.org,2002:", "!!", 1)
        raise YamlError(f"YAML tag '{shown}' is not allowed in a flow file", _pos(node))


def _pos(node: yaml.Node) -> Pos:
    return Pos(node.start_mark.line + 1, node.start_mark.column + 1)


def read_file(path: str | os.PathLike[str]) -> bytes:
    """The bytes of a flow file, reading no more than :data:`MAX_BYTES` (+1 to tell).

    Raises :class:`OSError` when it cannot be read and :class:`YamlError` when
    it is larger than the bound, before anything big is in memory.
    """
    if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO or a device would block or never end
        raise YamlError("not a regular file", Pos(1, 1))
    with open(path, "rb") as fh:
        data = fh.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise YamlError(f"file is larger than {MAX_BYTES // 1024} KiB", Pos(1, 1))
    return data


def load(text: str | bytes) -> Source:
    """Parse one YAML document into a :class:`Source`; raise :class:`YamlError`."""
    if isinstance(text, bytes):
        if len(text) > MAX_BYTES:
            raise YamlError(f"file is larger than {MAX_BYTES // 1024} KiB", Pos(1, 1))
        if (encoding := _wide_encoding(text)) is not None:
            raise YamlError(f"file is {encoding}, not UTF-8: save it as UTF-8", Pos(1, 1))
        if b"\x00" in text:
            line = text[: text.index(b"\x00")].count(b"\n") + 1
            raise YamlError("file contains NUL bytes: not a text file", Pos(line, 1))
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = text[: exc.start].count(b"\n") + 1
            col = exc.start - (text.rfind(b"\n", 0, exc.start) + 1) + 1
            raise YamlError(f"file is not valid UTF-8 (byte {exc.start}, 0x{text[exc.start]:02x}): "
                            "save it as UTF-8", Pos(line, col)) from None
    elif len(text) > MAX_BYTES:
        raise YamlError(f"file is larger than {MAX_BYTES // 1024} KiB", Pos(1, 1))
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        pos = Pos(mark.line + 1, mark.column + 1) if mark else Pos(1, 1)
        raise YamlError(f"YAML syntax error: {exc.problem or exc.context}", pos) from None
    except yaml.YAMLError as exc:
        raise YamlError(f"YAML error: {exc}", Pos(1, 1)) from None
    except RecursionError:
        raise YamlError(f"nesting deeper than {MAX_DEPTH} levels", Pos(1, 1)) from None
    finally:
        loader.dispose()
    if node is None:
        raise YamlError("file is empty", Pos(1, 1))
    src = Source(None)
    counter = [0]
    try:
        src.data = _walk(loader, node, (), src, 0, counter)
    except yaml.MarkedYAMLError as exc:  # e.g. a tag no safe constructor knows
        mark = exc.problem_mark or exc.context_mark
        pos = Pos(mark.line + 1, mark.column + 1) if mark else Pos(1, 1)
        raise YamlError(f"YAML error: {exc.problem or exc.context}", pos) from None
    except RecursionError:
        raise YamlError(f"nesting deeper than {MAX_DEPTH} levels", Pos(1, 1)) from None
    return src


def _walk(loader: _Loader, node: yaml.Node, path: Path, src: Source, depth: int, counter: list[int]) -> Any:
    counter[0] += 1
    if counter[0] > MAX_VALUES:
        raise YamlError(f"too many values (over {MAX_VALUES}; an alias bomb?)", _pos(node))
    if depth > MAX_DEPTH:
        raise YamlError(f"nesting deeper than {MAX_DEPTH} levels", _pos(node))
    _check_tag(node)
    src.values.setdefault(path, _pos(node))
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise YamlError("mapping keys must be plain values", _pos(key_node))
            key = loader.construct_object(key_node)
            if isinstance(key, (int, float, bool)) and not isinstance(key, bool):
                key = str(key_node.value)  # keypad keys such as 1: stay "1"
            elif not isinstance(key, str):
                key = str(key_node.value)
            if key in out:
                raise YamlError(f"duplicate key '{key}'", _pos(key_node))
            src.keys[path + (key,)] = _pos(key_node)
            out[key] = _walk(loader, value_node, path + (key,), src, depth + 1, counter)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_walk(loader, item, path + (i,), src, depth + 1, counter) for i, item in enumerate(node.value)]
    value = loader.construct_object(node)
    if isinstance(value, (bytes, bytearray)):
        raise YamlError("binary values are not allowed", _pos(node))
    if not isinstance(value, (str, int, float, bool, type(None))):
        # dates and timestamps: keep the text the designer wrote
        value = str(node.value)
    return value

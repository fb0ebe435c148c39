"""The one YAML reader of densemtl: ``--config`` files, bench grids, a run's ``config.yaml``, a
bench's ``bench.yaml`` and the ``key=value`` knobs of flags all go through :func:`parse_yaml`.

It is PyYAML's safe loader (plain data only) with four rules on top, each a one-line
:class:`~densemtl.errors.ConfigError`:

- a key given twice in one mapping is refused, naming the key and both lines (PyYAML silently
  keeps the last value); merge keys (``<<``) may still be overridden;
- nesting deeper than :data:`MAX_DEPTH` levels is refused (no config is nested beyond a few
  levels; a 5000-deep list would otherwise end in a RecursionError);
- the value of a *text key* (a string-typed config key such as ``amp``, ``arch`` or ``method``)
  that YAML 1.1 would read as a boolean keeps its own spelling: ``amp: off`` is the flag's
  ``--amp off``, not ``false``;
- anything else malformed says the line.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

import yaml

from densemtl.errors import ConfigError

#: The deepest nesting of lists and mappings a YAML file may have.
MAX_DEPTH = 32
_BOOL_TAG = "tag:yaml.org,2002:bool"


class _Loader(yaml.SafeLoader):
    """A safe loader that refuses duplicate keys and keeps text keys' boolean-looking values."""

    text_keys: Collection[str] = ()

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise ConfigError(f"key {key!r} is given twice (lines {seen[key]} and {line})")
                seen[key] = line
            except TypeError:
                continue  # an unhashable key: PyYAML's own error says so below
            text_key = isinstance(key, str) and key.replace("-", "_") in self.text_keys
            if text_key and isinstance(value_node, yaml.ScalarNode) and value_node.tag == _BOOL_TAG:
                value_node.tag = "tag:yaml.org,2002:str"  # `amp: off` is the flag's "off"
        return super().construct_mapping(node, deep=deep)


def _depth_ok(node: yaml.Node) -> bool:
    """Whether ``node`` nests at most :data:`MAX_DEPTH` levels (walked without recursion)."""
    stack: list[tuple[yaml.Node, int]] = [(node, 1)]
    seen: set[int] = set()
    while stack:
        n, depth = stack.pop()
        if id(n) in seen:  # an alias to a node already walked
            continue
        seen.add(id(n))
        if isinstance(n, yaml.SequenceNode | yaml.MappingNode):
            if depth > MAX_DEPTH:
                return False
            children = n.value if isinstance(n, yaml.SequenceNode) else [c for pair in n.value for c in pair]
            stack.extend((c, depth + 1) for c in children)
    return True


def parse_yaml(text: str, what: str, text_keys: Collection[str] = ()) -> Any:
    """The data of YAML ``text`` read from ``what`` (``config file F``, ``--arch-arg k``): plain
    values only, no duplicate keys, at most :data:`MAX_DEPTH` levels deep; ``text_keys`` keep
    boolean-looking values as their text. A bad document is a one-line ConfigError."""
    loader = _Loader(text)
    loader.text_keys = frozenset(text_keys)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise ConfigError(f"{what} is nested too deeply (more than {MAX_DEPTH} levels)") from None
        if node is None:
            return None
        if not _depth_ok(node):
            raise ConfigError(f"{what} is nested too deeply (more than {MAX_DEPTH} levels)")
        try:
            return loader.construct_document(node)
        except ConfigError as e:
            raise ConfigError(f"{what}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{what} is not valid YAML{where}") from None
    finally:
        loader.dispose()


def read_yaml_file(path: str | Path, text_keys: Collection[str] = ()) -> dict[str, Any]:
    """A YAML config file read as a mapping (:func:`parse_yaml`; empty: ``{}``); a folder, a missing,
    unreadable or non-UTF-8 file, or a file not holding a mapping is a one-line ConfigError."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"config file {p} is a folder; pass a YAML file")
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config file {p} is not a text file (not UTF-8); pass a YAML file") from None
    except OSError as e:
        raise ConfigError(f"config file {p} cannot be read ({e.strerror or e})") from None
    data = parse_yaml(text, f"config file {p}", text_keys)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of keys to values")
    return data

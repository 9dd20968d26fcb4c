"""Reading and writing configuration trees: YAML, ``_base_`` layering, ``key=value`` overrides.

The schema and its validation live in :mod:`robustreid.config`; this module turns files and
command-line overrides into one plain nested dict plus, for every key path in it, the file
(or ``"command line"``) the value came from, so that every error can name its origin.

YAML files may inherit from other files with a top-level ``_base_`` key (a path relative to
the including file, or a list of them). Bases are loaded first, in order, and the including
file is deep-merged on top: mappings merge key by key, anything else is replaced.

Command-line overrides have the form ``dotted.key=value``; ``value`` is parsed as YAML, so
``data.height=128`` is an int, ``eval.rerank=true`` a bool and ``model.pretrained=none`` the
string ``"none"`` (YAML's null is spelled ``null`` or ``~``). A mapping value is merged into
the existing mapping, like a file layer.

Numbers: PyYAML follows YAML 1.1, which reads ``1e-3`` as a *string*. The loader used here
also reads exponent forms without a dot or without an exponent sign (``1e-3``, ``5e4``,
``1.5e3``) as floats, and the writer quotes strings of that shape so saved files round-trip.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from robustreid.errors import ConfigError

__all__ = [
    "BASE_KEY", "COMMAND_LINE", "Index", "KeyPath", "Sources", "check_tree",
    "config_error", "describe_value", "dump_yaml", "format_path", "load_tree",
    "quote", "record_sources", "source_of",
]

BASE_KEY = "_base_"
COMMAND_LINE = "command line"

# --------------------------------------------------------------------------------------------
# Key paths and where their values came from
# --------------------------------------------------------------------------------------------


class Index(int):
    """A list position inside a key path (mapping keys may be ints too)."""


KeyPath = tuple[Any, ...]  # mapping keys (usually str) and list positions (Index)
Sources = dict[KeyPath, str]  # key path -> where the value at that path came from


def format_path(path: KeyPath) -> str:
    """The dotted form of a key path (``data.options.x``, ``train.milestones[1]``)."""
    out = ""
    for part in path:
        if isinstance(part, Index):
            out += f"[{int(part)}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "<config>"


def describe_value(value: Any) -> str:
    """``type repr`` of a value for a message (``int 3``, ``str 'x'``, ``null``), cut short."""
    if value is None:
        return "null"
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{type(value).__name__} {text}"


def quote(text: str, limit: int = 80) -> str:
    """``repr(text)``, cut to about ``limit`` characters (a 5,000-digit value stays
    readable in a one-line message)."""
    quoted = repr(text)
    return quoted if len(quoted) <= limit else f"{quoted[:limit - 4]}...{quoted[-1]}"


def source_of(path: KeyPath, sources: Sources) -> str | None:
    """Where the value at ``path`` (or its nearest recorded parent) came from, or None."""
    for end in range(len(path), -1, -1):
        found = sources.get(tuple(path[:end]))
        if found is not None:
            return found
    return None


def config_error(path: KeyPath, problem: str, sources: Sources, hint: str = "") -> ConfigError:
    """``KEY: PROBLEM (from SOURCE); HINT`` as a :class:`ConfigError` about ``path``."""
    key = format_path(path)
    source = source_of(path, sources)
    message = f"{key}: {problem}"
    if source is not None:
        message += f" (from {source})"
    if hint:
        message += f"; {hint}"
    return ConfigError(message, key=key, source=source)


def record_sources(tree: Any, source: str, prefix: KeyPath, sources: Sources) -> None:
    """Mark ``prefix`` and every mapping key below it as coming from ``source``."""
    sources[prefix] = source
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            record_sources(value, source, prefix + (key,), sources)


# --------------------------------------------------------------------------------------------
# YAML reading and writing
# --------------------------------------------------------------------------------------------

_FLOAT_TAG = "tag:yaml.org,2002:float"
_EXTRA_FLOAT = re.compile(
    r"^(?:[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+|[-+]?\.[0-9][0-9_]*[eE][-+]?[0-9]+)$"
)


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-3``-style floats and rejects duplicate mapping keys."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(
                    key_node, yaml.ScalarNode
                ):
                    continue
                key = self.construct_object(key_node)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"found duplicate key {key!r}",
                        key_node.start_mark,
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


class _Dumper(yaml.SafeDumper):
    """SafeDumper that quotes strings which :class:`_Loader` would read as floats, and writes
    strings holding a NEL (U+0085) double-quoted: PyYAML's single-quoted style (its choice
    with ``allow_unicode``) turns ``"\x85"`` into ``" "`` on reading."""

    def represent_str(self, data: str) -> yaml.ScalarNode:
        if "\x85" in data:
            return self.represent_scalar("tag:yaml.org,2002:str", data, style='"')
        return super().represent_str(data)


_Dumper.add_representer(str, _Dumper.represent_str)


for _cls in (_Loader, _Dumper):
    _cls.add_implicit_resolver(_FLOAT_TAG, _EXTRA_FLOAT, list("-+0123456789."))


def dump_yaml(tree: Mapping[str, Any]) -> str:
    """``tree`` (plain data) as YAML text that :func:`load_tree` reads back equal."""
    return yaml.dump(dict(tree), Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                     allow_unicode=True)


def _tag_patterns(loader: type[yaml.SafeLoader]) -> dict[str, list[re.Pattern[str]]]:
    """Tag -> the regular expressions with which ``loader`` recognises plain scalars."""
    out: dict[str, list[re.Pattern[str]]] = {}
    for resolvers in loader.yaml_implicit_resolvers.values():
        for tag, regexp in resolvers:
            if regexp not in out.setdefault(tag, []):
                out[tag].append(regexp)
    return out


def _checked_scalar(tag: str, patterns: Sequence[re.Pattern[str]]) -> Any:
    """A constructor for ``tag`` that turns what PyYAML's own would raise on a malformed
    scalar (``!!bool x``: KeyError, ``!!int ''``: IndexError, ``!!timestamp x``:
    AttributeError, ``2001-13-45`` or a 5,000-digit integer: ValueError) into a
    ConstructorError, a YAMLError like any syntax error."""
    construct = _Loader.yaml_constructors[tag]
    name = tag.rsplit(":", 1)[-1]

    def construct_checked(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
        text = loader.construct_scalar(node)  # a ConstructorError for a non-scalar node
        if not any(p.match(text) for p in patterns):
            raise yaml.constructor.ConstructorError(
                None, None, f"{quote(text)} is not a valid {name}", node.start_mark)
        try:
            return construct(loader, node)
        except ValueError as exc:  # 2001-13-45, 0b_, more digits than int() converts
            reason = str(exc).split(";")[0]  # not Python's advice on sys.set_int_max_str_digits
            raise yaml.constructor.ConstructorError(
                None, None, f"{quote(text, 40)} is not a valid {name}: {reason}",
                node.start_mark) from exc

    return construct_checked


_PATTERNS = _tag_patterns(_Loader)
for _name in ("bool", "int", "float", "timestamp"):
    _tag = f"tag:yaml.org,2002:{_name}"
    # an explicit !!float may be written like an int (!!float 1)
    _extra = _PATTERNS["tag:yaml.org,2002:int"] if _name == "float" else []
    _Loader.add_constructor(_tag, _checked_scalar(_tag, [*_PATTERNS[_tag], *_extra]))


def _parse_yaml(text: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader derives from SafeLoader
    except RecursionError as exc:
        # The composer recurses once per nesting level: "[[[[..." runs out of stack.
        raise yaml.YAMLError("nested too deeply for the YAML parser") from exc


# Limits of a configuration tree (a file layer, an override value or a mapping given in
# code), checked by check_tree before anything walks it recursively.
MAX_DEPTH = 64
MAX_VALUES = 100_000
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def check_tree(tree: Any, prefix: KeyPath, source: str) -> None:
    """Raise a :class:`ConfigError` (naming the key and ``source``) for a tree that no later
    step could handle: a value that contains itself (a YAML alias inside its own anchor,
    ``&a {x: *a}``), nesting deeper than :data:`MAX_DEPTH`, more than :data:`MAX_VALUES`
    values once aliases are expanded (``a: &a [1, 1]``, ``b: &b [*a, *a]``, ...), or an
    integer (value or mapping key) outside the 64-bit range."""
    sizes: dict[int, int] = {}  # id of a container already checked -> its expanded size
    open_ids: set[int] = set()  # containers on the current path

    def fail(path: KeyPath, problem: str) -> ConfigError:
        key = format_path(path)
        return ConfigError(f"{key}: {problem} (from {source})", key=key, source=source)

    def scalar(value: Any, path: KeyPath) -> None:
        if isinstance(value, int) and not isinstance(value, bool) and not (
                INT64_MIN <= value <= INT64_MAX):
            raise fail(path, f"expected an integer between -2**63 and 2**63 - 1, got an "
                             f"integer of {value.bit_length()} bits")

    def visit(value: Any, path: KeyPath, depth: int) -> int:
        if not isinstance(value, Mapping | list | tuple):
            scalar(value, path)
            return 1
        ident = id(value)
        if ident in sizes:
            return sizes[ident]
        if ident in open_ids:
            raise fail(path, "the value refers to itself (a YAML alias used inside its own "
                             "anchor)")
        if depth >= MAX_DEPTH:
            raise fail(path, f"nested more than {MAX_DEPTH} levels deep")
        open_ids.add(ident)
        total = 1
        if isinstance(value, Mapping):
            children = list(value.items())
            for key, _ in children:
                scalar(key, path + (key,))
        else:
            children = [(Index(i), item) for i, item in enumerate(value)]
        for key, child in children:
            total += visit(child, path + (key,), depth + 1)
            if total > MAX_VALUES:
                raise fail(path, f"holds more than {MAX_VALUES} values (YAML aliases "
                                 "expanded)")
        open_ids.discard(ident)
        sizes[ident] = total
        return total

    visit(tree, prefix, 0)


def _read_yaml_file(path: Path, label: str, included_from: str | None) -> dict[Any, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if included_from is None:
            raise ConfigError(f"config file not found: '{label}'", source=label) from None
        raise ConfigError(
            f"{BASE_KEY}: missing base file '{label}' (from {included_from})",
            key=BASE_KEY,
            source=included_from,
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file '{label}': {exc}", source=label) from exc
    try:
        data = _parse_yaml(text)
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())
        raise ConfigError(f"invalid YAML in '{label}': {detail}", source=label) from exc
    check_tree(data, (), label)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"'{label}' must contain a mapping at the top level, got {describe_value(data)}",
            source=label,
        )
    return data


# --------------------------------------------------------------------------------------------
# Layering: files with _base_, deep merge, overrides
# --------------------------------------------------------------------------------------------


def _deep_merge(base: dict[Any, Any], over: Mapping[Any, Any]) -> dict[Any, Any]:
    """Merge ``over`` into ``base`` in place: mappings key by key, other values replaced."""
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def _load_layers(
    path: Path, label: str, stack: tuple[Path, ...], included_from: str | None
) -> tuple[dict[Any, Any], Sources]:
    """Load ``path`` and its bases; returns the merged tree and where each key came from."""
    try:
        resolved = path.resolve()
    except ValueError as exc:  # a NUL byte, or a lone surrogate the file system cannot encode
        where = f" (from {included_from})" if included_from is not None else ""
        raise ConfigError(f"{BASE_KEY if included_from else 'config file'}: "
                          f"{quote(label)} is not a usable file name: {exc}{where}",
                          key=BASE_KEY if included_from else None,
                          source=included_from or label) from exc
    if resolved in stack:
        cycle = " -> ".join(str(p) for p in stack[stack.index(resolved) :] + (resolved,))
        raise ConfigError(
            f"{BASE_KEY}: cycle in base files: {cycle} (from {included_from})",
            key=BASE_KEY,
            source=included_from,
        )
    data = _read_yaml_file(path, label, included_from)
    bases = data.pop(BASE_KEY, None)
    if bases is None:
        bases = []
    elif isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) and b for b in bases):
        raise ConfigError(
            f"{BASE_KEY}: expected a path or a list of paths, got {describe_value(bases)} "
            f"(from {label})",
            key=BASE_KEY,
            source=label,
        )

    merged: dict[Any, Any] = {}
    sources: Sources = {}
    for base in bases:
        base_path = path.parent / base
        tree, tree_sources = _load_layers(base_path, str(base_path), stack + (resolved,), label)
        _deep_merge(merged, tree)
        # Union is exact for every path present in the merged tree: a path defined by the
        # later layer takes its source, any other surviving path came from the earlier one.
        sources.update(tree_sources)
    _deep_merge(merged, data)
    for key, value in data.items():
        record_sources(value, label, (key,), sources)
    return merged, sources


def _apply_override(tree: dict[Any, Any], sources: Sources, override: str) -> None:
    if not isinstance(override, str) or "=" not in override:
        raise ConfigError(
            f"override {quote(override) if isinstance(override, str) else override!r} "
            f"(from {COMMAND_LINE}): expected the form key.sub=value",
            source=COMMAND_LINE,
        )
    dotted, text = override.split("=", 1)
    dotted = dotted.strip()
    parts = dotted.split(".")
    if not dotted or not all(parts):
        raise ConfigError(
            f"override {quote(override)} (from {COMMAND_LINE}): malformed key "
            f"{quote(dotted)}",
            source=COMMAND_LINE,
        )
    try:
        value = _parse_yaml(text)
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())
        raise ConfigError(
            f"{dotted}: cannot parse value {quote(text)} as YAML (from {COMMAND_LINE}): "
            f"{detail}; "
            "quote it to pass a string",
            key=dotted,
            source=COMMAND_LINE,
        ) from exc
    check_tree(value, tuple(parts), COMMAND_LINE)

    node = tree
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
            sources[tuple(parts[: depth + 1])] = COMMAND_LINE
        elif not isinstance(child, dict):
            prefix = tuple(parts[: depth + 1])
            origin = source_of(prefix, sources) or "defaults"
            raise ConfigError(
                f"{dotted}: cannot set (from {COMMAND_LINE}): '{format_path(prefix)}' is "
                f"{describe_value(child)} (from {origin}), not a section",
                key=dotted,
                source=COMMAND_LINE,
            )
        node = child
    last = parts[-1]
    if isinstance(value, dict) and isinstance(node.get(last), dict):
        _deep_merge(node[last], value)
    else:
        node[last] = value
    record_sources(value, COMMAND_LINE, tuple(parts), sources)


def load_tree(path: str | Path | None, overrides: Sequence[str]) -> tuple[dict[Any, Any], Sources]:
    """The merged tree of ``path`` (with its ``_base_`` chain) and ``overrides``, and where each
    key's value came from.

    Args:
        path: YAML file to load, or None to start from an empty tree.
        overrides: ``dotted.key=value`` strings, applied in order; each value is parsed as YAML.

    Raises:
        ConfigError: for a missing or unreadable file, a missing base, a ``_base_`` cycle, or
            a malformed override.
    """
    if isinstance(overrides, str):
        overrides = [overrides]
    tree: dict[Any, Any] = {}
    sources: Sources = {}
    if path is not None:
        tree, sources = _load_layers(Path(path), str(path), (), None)
    for override in overrides:
        _apply_override(tree, sources, override)
    return tree, sources

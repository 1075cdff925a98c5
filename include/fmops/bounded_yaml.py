"""YAML from people, read within bounds: its size, its nesting and what its aliases expand to
are checked before a Python value is built, and an error names the place, never the text.

PyYAML's ``safe_load`` builds no objects of arbitrary classes, but it has no bound: a few hundred
bytes of anchors and aliases (``a: &a [x, x]``, ``b: &b [*a, *a]``, ...) stand for billions of
values, which anything that walks the result (validation, an error message that shows the
value) expands. Its error messages quote the offending line, which may be a line of a secrets
file given as a config by mistake. No maintained library bounds PyYAML (ruamel's and PyYAML's
loaders have no such limits), so this composes the document with PyYAML's safe loader, measures
the node graph (aliases counted as the values they expand to), and only then constructs it.
"""

from __future__ import annotations

from typing import Any

import yaml

MAX_BYTES = 1024 * 1024  # a pipeline config is a few KB
MAX_VALUES = 100_000  # scalars, lists and mappings once aliases are expanded
MAX_DEPTH = 64  # nested lists and mappings


class YamlLimitError(ValueError):
    """The YAML is too large, too deep or expands to too much; the message names the limit."""


def load(text: str | bytes, what: str = "the YAML") -> Any:
    """The value of one YAML document, within ``MAX_BYTES``, ``MAX_DEPTH`` and ``MAX_VALUES``.

    Raises ``YamlLimitError`` for a document past a limit and ``ValueError`` for one that is not
    valid YAML (with its line and column, without quoting it)."""
    size = len(text.encode() if isinstance(text, str) else text)
    if size > MAX_BYTES:
        raise YamlLimitError(
            f"{what} is {size:,} bytes; at most {MAX_BYTES:,} are read (a pipeline config is a "
            "few KB: is this the right file?)"
        )
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(
                f"{what} is not UTF-8 text (byte {err.start}): is this the right file?"
            ) from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _measure(node, what)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as err:
        raise ValueError(f"{what} is not valid YAML: {_where(err)}") from None
    except yaml.YAMLError as err:
        raise ValueError(f"{what} is not valid YAML: {type(err).__name__}") from None
    except RecursionError:
        raise YamlLimitError(
            f"{what} nests lists or mappings too deeply to read (at most {MAX_DEPTH} levels)"
        ) from None
    finally:
        loader.dispose()


def _where(err: yaml.MarkedYAMLError) -> str:
    """Where the error is and what PyYAML found there, without the line's text (PyYAML's own
    message quotes it)."""
    mark = err.problem_mark or err.context_mark
    place = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
    problem = err.problem or err.context or "a syntax error"
    return f"{problem} at {place}"


def _measure(root: yaml.Node, what: str) -> None:
    """Refuse a node graph deeper than ``MAX_DEPTH`` or larger than ``MAX_VALUES`` once its
    aliases are expanded. An alias is the same node object as its anchor, so each node's
    expanded size is computed once (memo) and counted wherever it is used."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # on the current path: met again, an alias refers to itself
    # iterative post-order walk: (node, depth, children done)
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
    while stack:
        node, depth, done = stack.pop()
        if id(node) in sizes:
            continue
        if depth > MAX_DEPTH:
            raise YamlLimitError(f"{what} nests lists or mappings deeper than {MAX_DEPTH} levels")
        children = _children(node)
        if not done and children:
            if id(node) in open_nodes:
                mark = node.start_mark
                raise YamlLimitError(
                    f"{what} has an anchor that contains an alias of itself (line "
                    f"{mark.line + 1}): its value would be infinite"
                )
            open_nodes.add(id(node))
            stack.append((node, depth, True))
            stack.extend((child, depth + 1, False) for child in children if id(child) not in sizes)
            continue
        open_nodes.discard(id(node))
        total = 1 + sum(sizes.get(id(child), 0) for child in children)
        if total > MAX_VALUES:
            raise YamlLimitError(
                f"{what} expands to more than {MAX_VALUES:,} values (anchors '&' reused through "
                "aliases '*' multiply them): a pipeline config has a few hundred"
            )
        sizes[id(node)] = total


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []

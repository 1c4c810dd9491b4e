"""YAML read with bounds: a configuration file's mistakes name the file and line, and a small file cannot make
the reader build an enormous structure.

YAML aliases (``*a``) repeat an anchored node (``&a``) by reference, so a few hundred bytes can describe a
structure of billions of nodes (the "billion laughs"). PyYAML builds it as shared references at once, but
whatever walks it afterwards (the argument parser's checks, copies, messages) walks every repetition, and
burns CPU until killed. The guard counts the nodes a document expands to before anything is built, and
refuses one whose aliases expand it past :data:`MAX_EXPANDED_NODES` and :data:`MAX_EXPANSION` times its
written size: Go's YAML library (yaml.v3) refuses "excessive aliasing" by the same kind of ratio.

jsonargparse reads every YAML value (``--config`` files, values on the command line) with its loader;
:func:`guard_jsonargparse` puts the guard in front of it, through jsonargparse's public ``set_loader``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import jsonargparse
import yaml

from logreg.machinery.errors import ConfigError

MAX_EXPANDED_NODES = 100_000  # a configuration holds hundreds; a list of many columns is written out, not aliased
MAX_EXPANSION = 10  # aliases may repeat a document's nodes this many times over before it is refused
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's also bounds the nesting depth (1,000)


class ExcessiveAliasing(yaml.YAMLError):
    """A YAML document whose aliases expand it far beyond its written size, or into itself."""


def check_expansion(text: str) -> None:
    """Raise :class:`ExcessiveAliasing` when ``text``'s aliases expand it too far (see the module doc), or
    ``yaml.YAMLError`` when it is not YAML.

    >>> check_expansion("a: &x [1, 2]\\nb: *x")
    >>> laughs = "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\\n" + "".join(
    ...     f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\\n" for p, c in zip("abcd", "bcde")
    ... )
    >>> check_expansion(laughs)
    Traceback (most recent call last):
    ...
    logreg.machinery.yaml_files.ExcessiveAliasing: its aliases (*name) expand 21 written nodes to 123,461, more than 100,000 and 10 times the written ones; write the values out instead.
    """
    for document in yaml.compose_all(text, Loader=_Loader):
        if document is not None:
            _check_node(document)


def _check_node(root: yaml.Node) -> None:
    sizes: dict[int, int] = {}  # expanded size of each distinct node, children first
    open_nodes: set[int] = set()
    stack = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        children = list(_children(node))
        if children_done:
            open_nodes.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in children)
            continue
        if key in open_nodes:
            raise ExcessiveAliasing("an alias (*name) refers to a node that contains it, which never ends.")
        open_nodes.add(key)
        stack.append((node, True))
        for child in children:
            if id(child) in open_nodes:
                raise ExcessiveAliasing("an alias (*name) refers to a node that contains it, which never ends.")
            if id(child) not in sizes:
                stack.append((child, False))
    written, expanded = len(sizes), sizes[id(root)]
    if expanded > MAX_EXPANDED_NODES and expanded > MAX_EXPANSION * written:
        raise ExcessiveAliasing(
            f"its aliases (*name) expand {written:,} written nodes to {expanded:,}, more than {MAX_EXPANDED_NODES:,} "
            f"and {MAX_EXPANSION} times the written ones; write the values out instead."
        )


def _children(node: yaml.Node) -> Iterator[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        yield from node.value
    elif isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            yield key
            yield value


def describe(err: yaml.YAMLError) -> str:
    """A YAML error as a sentence with its line and column (1-based), e.g. ``did not find expected ',' or ']'
    on line 3, column 9 (while parsing a flow sequence from line 2, column 7)``."""
    if not isinstance(err, yaml.MarkedYAMLError) or err.problem is None:
        return " ".join(str(err).split())
    where = f" on line {err.problem_mark.line + 1}, column {err.problem_mark.column + 1}" if err.problem_mark else ""
    context = ""
    if err.context:
        start = err.context_mark
        since = f" from line {start.line + 1}, column {start.column + 1}" if start else ""
        context = f" ({err.context}{since})"
    return f"{err.problem}{where}{context}"


def read_yaml(path: str | Path) -> Any:
    """The content of a YAML file, checked as above; mistakes raise ConfigError naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start})."
        ) from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read ({err.strerror or err}).") from None
    try:
        check_expansion(text)
        return yaml.load(text, Loader=_Loader)  # a safe loader: CSafeLoader or SafeLoader
    except ExcessiveAliasing as err:
        raise ConfigError(f"{path}: refused: {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {describe(err).rstrip('.')}.") from None


def check_config_files(args: Sequence[str]) -> None:
    """Read every ``--config FILE`` of a command line as :func:`read_yaml` does, so that a malformed or
    billion-laughs file fails naming itself before the argument parser reads it (which names no file)."""
    for i, word in enumerate(args):
        value = word.removeprefix("--config=") if word.startswith("--config=") else None
        if word == "--config" and i + 1 < len(args):
            value = args[i + 1]
        if value is not None and Path(value).is_file():
            read_yaml(value)


def guard_jsonargparse() -> None:
    """Put :func:`check_expansion` in front of jsonargparse's YAML loader (once), for values it reads."""
    loader = jsonargparse.get_loader("yaml")
    if getattr(loader, "guarded", False):
        return

    @functools.wraps(loader)
    def guarded(value: str, *args: Any, **kwargs: Any) -> Any:
        check_expansion(value)
        return loader(value, *args, **kwargs)

    guarded.guarded = True  # type: ignore[attr-defined]
    jsonargparse.set_loader("yaml", guarded, exceptions=(yaml.YAMLError,))

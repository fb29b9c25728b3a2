"""Filters at the source: checking which operations, columns and condition a watch or stream keeps.

The installer turns them into trigger definitions (``AFTER INSERT OR UPDATE
OF ... WHEN (...)``) and change streams into a publication (``WITH (publish
= ...)``, column lists and row filters); both check them here first, before
anything connects, so that a bad value is a :class:`ConfigurationError`
naming the option.

A condition is SQL text that ends up inside ``WHEN (...)`` or ``WHERE
(...)``: :func:`check_condition` makes sure it is one expression (no ``;``,
parentheses balanced, quotes and comments closed), so it can never close
that parenthesis and add a statement of its own. What it means is for
Postgres to say, when the trigger or publication is created.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ._errors import ConfigurationError
from ._names import check_identifier, check_text

__all__ = ["OPERATIONS", "ROW_OPERATIONS", "check_columns", "check_condition", "check_operations"]

#: Every operation a watch or change stream can keep, in the order they are listed.
OPERATIONS = ("INSERT", "UPDATE", "DELETE", "TRUNCATE")
#: The operations that change rows (TRUNCATE is a statement).
ROW_OPERATIONS = ("INSERT", "UPDATE", "DELETE")

#: A dollar-quote opening tag: ``$$`` or ``$tag$``.
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_\x80-\U0010ffff]*)?\$")


def _sequence(what: str, value: object) -> list[object]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ConfigurationError(f"{what} must be a list of names, not {value!r}")
    if not value:
        raise ConfigurationError(f"{what} must name at least one (or be None for all)")
    return list(value)


def check_operations(what: str, value: object) -> tuple[str, ...] | None:
    """``value`` as operations in canonical order (``None``: all of them).

    Each one of INSERT, UPDATE, DELETE, TRUNCATE (any case), at least one.
    """
    if value is None:
        return None
    wanted: set[str] = set()
    for op in _sequence(what, value):
        name = op.upper() if isinstance(op, str) else op
        if name not in OPERATIONS:
            raise ConfigurationError(f"{what}: {op!r} is not one of {', '.join(OPERATIONS)}")
        wanted.add(str(name))
    return tuple(op for op in OPERATIONS if op in wanted)


def check_columns(what: str, value: object) -> tuple[str, ...] | None:
    """``value`` as column names, each once, in the order given (``None``: no column filter)."""
    if value is None:
        return None
    names = [check_identifier(f"{what} entry", name) for name in _sequence(what, value)]
    return tuple(dict.fromkeys(names))


def check_condition(what: str, value: object) -> str | None:
    """``value`` if it is one SQL expression (``None``: no condition), stripped of outer blanks."""
    if value is None:
        return None
    text = check_text(what, value).strip()
    if not text:
        raise ConfigurationError(f"{what} must not be blank")
    problem = _expression_problem(text)
    if problem:
        raise ConfigurationError(f"{what} must be one SQL expression: {problem}: {text!r}")
    return text


def _closing(text: str, start: int, end_mark: str, *, doubled: bool, backslash: bool = False) -> int:
    """Index just past the quote that closes the one at ``start``, or -1."""
    i = start + 1
    while i < len(text):
        ch = text[i]
        if backslash and ch == "\\":
            i += 2
            continue
        if ch == end_mark:
            if doubled and text.startswith(end_mark, i + 1):
                i += 2
                continue
            return i + 1
        i += 1
    return -1


def _expression_problem(text: str) -> str | None:
    """Why ``text`` is not one expression Postgres could read inside ``( ... )``, or None."""
    depth = 0
    i = 0
    while i < len(text):
        ch = text[i]
        before = text[i - 1] if i else " "
        if ch == "'":
            escaped = before in "eE" and (i < 2 or not (text[i - 2].isalnum() or text[i - 2] in "_$"))
            i = _closing(text, i, "'", doubled=True, backslash=escaped)
            if i < 0:
                return "a quoted string is not closed"
            continue
        if ch == '"':
            i = _closing(text, i, '"', doubled=True)
            if i < 0:
                return "a quoted name is not closed"
            continue
        if ch == "$" and not (before.isalnum() or before in "_$"):
            tag = _DOLLAR_TAG.match(text, i)
            if tag:
                close = text.find(tag.group(), tag.end())
                if close < 0:
                    return "a dollar-quoted string is not closed"
                i = close + len(tag.group())
                continue
        if text.startswith("--", i):
            newline = text.find("\n", i)
            if newline < 0:
                return "it ends in a -- comment"
            i = newline + 1
            continue
        if text.startswith("/*", i):
            i = _comment_end(text, i)
            if i < 0:
                return "a /* comment is not closed"
            continue
        if ch == ";":
            return "it contains ';'"
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                return "a ')' closes a parenthesis it did not open"
        i += 1
    if depth:
        return "a '(' is not closed"
    return None


def _comment_end(text: str, start: int) -> int:
    """Index just past the ``*/`` closing the (nestable) comment at ``start``, or -1."""
    depth = 0
    i = start
    while i < len(text):
        if text.startswith("/*", i):
            depth += 1
            i += 2
        elif text.startswith("*/", i):
            depth -= 1
            i += 2
            if depth == 0:
                return i
        else:
            i += 1
    return -1

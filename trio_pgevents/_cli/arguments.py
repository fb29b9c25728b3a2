"""Option value types for argparse: each turns a command-line word into a value or a usage error."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

from .._errors import ConfigurationError
from .._filters import check_columns, check_operations
from .._names import check_slot_name
from .._options import MAX_PARTITIONS

__all__ = [
    "bool_arg",
    "byte_size",
    "column_list",
    "non_negative_float",
    "operation_list",
    "partition_count",
    "port_number",
    "positive_float",
    "positive_int",
    "slot_name",
]

N = TypeVar("N", int, float)


def bool_arg(text: str) -> bool:
    """pg_events' ``--auto-rebuild`` values (strtobool)."""
    value = text.strip().lower()
    if value in ("y", "yes", "t", "true", "on", "1"):
        return True
    if value in ("n", "no", "f", "false", "off", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def _number(convert: Callable[[str], N], text: str, expected: str) -> N:
    try:
        return convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, not {text!r}") from None


def positive_int(text: str) -> int:
    """A whole number >= 1."""
    value = _number(int, text, "a whole number")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, not {value}")
    return value


def partition_count(text: str) -> int:
    """``--partitions``: a consumer group's partitions, 1..1024."""
    value = positive_int(text)
    if value > MAX_PARTITIONS:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_PARTITIONS} partitions, not {value}")
    return value


def port_number(text: str) -> int:
    """A TCP port, 0..65535 (0: any free port)."""
    value = _number(int, text, "a port number")
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number from 0 to 65535, not {value}")
    return value


def non_negative_float(text: str) -> float:
    """A number of seconds >= 0."""
    value = _number(float, text, "a number of seconds")
    if not value >= 0:  # NaN too
        raise argparse.ArgumentTypeError(f"expected a number >= 0, not {text}")
    return value


def positive_float(text: str) -> float:
    """A number > 0."""
    value = non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("expected a number > 0")
    return value


def read_interval(text: str) -> float:
    """``--min-read-interval``: seconds, 0..1."""
    value = non_negative_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError("expected seconds from 0 to 1")
    return value


_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def byte_size(text: str) -> int:
    """``--max-slot-lag``: bytes, or with a unit as Postgres counts them (512MB, 1GB, 64kB; x1024)."""
    value = text.strip().lower().replace(" ", "")
    number = value.rstrip("kmgtib")
    unit = value[len(number) :]
    if unit.endswith("ib"):
        unit = unit[:-2]
    elif unit.endswith("b") and unit != "b":
        unit = unit[:-1]
    try:
        amount = float(number)
    except ValueError:
        amount = -1.0
    if unit not in _SIZE_UNITS or not 0 <= amount < float("inf"):
        raise argparse.ArgumentTypeError(f"expected bytes, or a size such as 512MB or 1GB, not {text!r}")
    return int(amount * _SIZE_UNITS[unit])


def slot_name(text: str) -> str:
    """A replication slot name, by the change stream's rule."""
    try:
        return check_slot_name(text)
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _words(text: str) -> list[str]:
    return [word.strip() for word in text.split(",")]


def operation_list(text: str) -> tuple[str, ...]:
    """``--operations``: a comma-separated list of INSERT, UPDATE, DELETE, TRUNCATE (any case)."""
    try:
        return check_operations("--operations", _words(text)) or ()
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def column_list(text: str) -> tuple[str, ...]:
    """``--columns``: a comma-separated list of column names (exactly as in the catalog)."""
    try:
        return check_columns("--columns", _words(text)) or ()
    except ConfigurationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None

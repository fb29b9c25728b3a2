"""A watch's options as the registry keeps them: payload mode and filters at the source.

:func:`watch_options` checks ``operations``, ``columns``, ``when`` and
``channel`` (before anything connects) and returns the JSON the registry
stores and ``trigger_specs`` turns into trigger definitions. Only options
that differ from the default are stored, so an unfiltered watch keeps the
exact options (and trigger hashes) it always had, and two spellings of one
filter (``["update", "INSERT"]`` and ``["INSERT", "UPDATE"]``) are one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from .._connection import validate_channel
from .._errors import ConfigurationError
from .._filters import OPERATIONS, check_columns, check_condition, check_operations
from .base import PayloadMode, check_payload

__all__ = ["watch_options"]


def watch_options(
    payload: PayloadMode,
    operations: Sequence[str] | None = None,
    columns: Sequence[str] | None = None,
    when: str | None = None,
    channel: str | None = None,
    skip_underscore: bool = False,
) -> str:
    """A watch's options as the registry keeps them (JSON text), checked.

    ``skip_underscore`` (schema watches): leave out tables named ``_...``.

    Raises:
        ConfigurationError: an option is malformed, or the filters contradict
            each other (``columns`` without UPDATE, a condition on TRUNCATE only).
    """
    options: dict[str, Any] = {"payload": check_payload(payload)}
    ops = check_operations("operations", operations)
    cols = check_columns("columns", columns)
    cond = check_condition("when", when)
    if ops is not None and ops != OPERATIONS:
        options["operations"] = list(ops)
    kept = ops or OPERATIONS
    if cols is not None:
        if "UPDATE" not in kept:
            raise ConfigurationError(
                f"columns filters UPDATEs, and operations {list(kept)} has no UPDATE: "
                "add UPDATE, or leave columns out"
            )
        options["columns"] = list(cols)
    if cond is not None:
        if kept == ("TRUNCATE",):
            raise ConfigurationError("when filters rows, and operations has only TRUNCATE (it has no rows)")
        options["when"] = cond
    if channel is not None:
        options["channel"] = validate_channel(channel)
    if not isinstance(skip_underscore, bool):
        raise ConfigurationError(f"skip_underscore must be a bool, not {skip_underscore!r}")
    if skip_underscore:
        options["skip_underscore"] = True
    return json.dumps(options)

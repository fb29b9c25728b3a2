"""The payload pg_events' callbacks were given: what the worker's callbacks get by default.

The installer's payloads (``{"v" : 1, "kind" : ...}``) carry more than
pg_events' did: ``v``, ``kind`` and ``truncated``, ``old_data``/``new_data``
even when null, 15 keys in every DDL event. A pg_events callback may tell
events apart by the keys present, so the worker hands it pg_events' own
shapes, key for key and in pg_events' order:

- data: ``table_schema``, ``table_name``, ``session_user``, ``method``,
  ``old_data`` (UPDATE and DELETE only), ``new_data`` (INSERT and UPDATE
  only), ``query``. A TRUNCATE (pg_events had no TRUNCATE trigger) has
  neither. Where pg_events would have failed the write (a row too big for
  NOTIFY) or could not send the row (``payload="keys"``), ``truncated`` /
  ``keys_only`` (and ``error``) are added, only then.
- a DDL command (ddl_command_end): ``classid``, ``objid``, ``objsubid``,
  ``command_tag``, ``object_type``, ``schema_name``, ``object_identity``,
  ``in_extension``.
- a dropped object (sql_drop): ``classid``, ``objid``, ``objsubid``,
  ``original``, ``normal``, ``is_temporary``, ``object_type``,
  ``schema_name``, ``object_name``, ``object_identity``.

Each value is the payload's own text (the same bytes Postgres wrote, so a
row reads exactly as pg_events' ``row_to_json`` gave it), in
``json_build_object``'s layout: ``{"key" : value, ...}``. A payload in
pg_events' own format (a database still built by pg_events) is passed as it
came.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from .. import RowChange, SchemaChange

__all__ = ["ALTER_KEYS", "DROP_KEYS", "pg_events_payload"]

#: pg_events' data event keys, in its order (old_data/new_data only for some methods).
ROW_KEYS = ("table_schema", "table_name", "session_user", "method", "old_data", "new_data", "query")
#: pg_events' ddl_command_end event keys.
ALTER_KEYS = (
    "classid",
    "objid",
    "objsubid",
    "command_tag",
    "object_type",
    "schema_name",
    "object_identity",
    "in_extension",
)
#: pg_events' sql_drop event keys.
DROP_KEYS = (
    "classid",
    "objid",
    "objsubid",
    "original",
    "normal",
    "is_temporary",
    "object_type",
    "schema_name",
    "object_name",
    "object_identity",
)
_OLD = frozenset({"UPDATE", "DELETE"})
_NEW = frozenset({"INSERT", "UPDATE"})
#: Added to a data event only when true: where pg_events would have failed the write.
_FLAGS = ("truncated", "keys_only")

_SPACE = re.compile(r"[ \t\n\r]*")
_raw_decode = json.JSONDecoder().raw_decode
#: The stdlib's JSON string scanner: (text, index after the quote) -> (string, end).
scanstring: Callable[[str, int], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]
_encode = msgspec.json.Encoder(decimal_format="number", enc_hook=str).encode


def _spans(text: str) -> dict[str, str]:
    """The text of each top-level value of a JSON object, by key.

    Raises:
        ValueError: ``text`` is not one JSON object.
    """
    spans: dict[str, str] = {}
    at = _SPACE.match(text).end()  # type: ignore[union-attr]
    if text[at : at + 1] != "{":
        raise ValueError("not a JSON object")
    at = _SPACE.match(text, at + 1).end()  # type: ignore[union-attr]
    if text[at : at + 1] == "}":
        return spans
    while True:
        if text[at : at + 1] != '"':
            raise ValueError("expected a key")
        key, at = scanstring(text, at + 1)
        at = _SPACE.match(text, at).end()  # type: ignore[union-attr]
        if text[at : at + 1] != ":":
            raise ValueError("expected ':'")
        at = _SPACE.match(text, at + 1).end()  # type: ignore[union-attr]
        _, end = _raw_decode(text, at)
        spans[key] = text[at:end]
        at = _SPACE.match(text, end).end()  # type: ignore[union-attr]
        separator = text[at : at + 1]
        if separator == "}":
            return spans
        if separator != ",":
            raise ValueError("expected ',' or '}'")
        at = _SPACE.match(text, at + 1).end()  # type: ignore[union-attr]


def _keys(data: dict[str, Any], ddl: bool) -> Iterable[str]:
    if ddl:
        yield from (ALTER_KEYS if data.get("original") is None else DROP_KEYS)
        return
    method = data.get("method")
    for key in ROW_KEYS:
        if (key == "old_data" and method not in _OLD) or (key == "new_data" and method not in _NEW):
            continue
        yield key
    for flag in _FLAGS:
        if data.get(flag) is True:
            yield flag
    if data.get("error") is not None:
        yield "error"


def pg_events_payload(event: RowChange | SchemaChange) -> str:
    """``event``'s payload in pg_events' shape (see the module's docstring). Never raises."""
    data = event.data
    if "v" not in data and "kind" not in data:
        return event.payload  # pg_events' own format: already its shape
    keys = list(_keys(data, isinstance(event, SchemaChange)))
    try:
        spans = _spans(event.payload)
    except Exception:  # RecursionError...: encode the parsed values instead
        spans = {}
    parts = []
    for key in keys:
        text = spans.get(key)
        if text is None:
            try:
                text = _encode(data.get(key)).decode("utf-8")
            except Exception:
                text = "null"
        parts.append(f'"{key}" : {text}')
    return "{" + ", ".join(parts) + "}"

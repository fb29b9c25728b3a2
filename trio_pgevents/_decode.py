"""Turning the installer's channel payloads into typed events.

The installer's trigger functions emit JSON whose first keys are fixed
(``{"v" : 1, "kind" : "row", ...}`` from ``json_build_object``), so the event
class is chosen with a prefix test; the JSON itself is parsed lazily, on the
first field access. Payloads in pg_events' original format (no ``kind`` key)
are recognised by their keys.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from ._events import Event, Notification, RowChange, SchemaChange

__all__ = ["Decoder", "decode_trigger_payload", "FORMAT_VERSION"]

#: Signature of a per-channel decoder: (channel, payload, pid, source) -> Event.
Decoder = Callable[[str, str, int, str], Event]

#: The version of the payload format the installer's functions emit.
FORMAT_VERSION = 1

_ROW_PREFIX = '{"v" : 1, "kind" : "row"'
_DDL_PREFIX = '{"v" : 1, "kind" : "ddl"'
_new = tuple.__new__


def decode_trigger_payload(channel: str, payload: str, pid: int, source: str) -> Event:
    """Decode a payload sent on an installer channel.

    Returns a :class:`RowChange` or :class:`SchemaChange`; anything else that
    arrives on the channel (a hand-written NOTIFY) stays a :class:`Notification`.
    """
    if payload.startswith(_ROW_PREFIX):
        return _new(RowChange, (channel, payload, pid, source))
    if payload.startswith(_DDL_PREFIX):
        return _new(SchemaChange, (channel, payload, pid, source))
    # Slow path: pg_events' own format, or another writer's JSON.
    try:
        data = json.loads(payload)
    except ValueError:
        data = None
    if isinstance(data, dict):
        kind = data.get("kind")
        if kind == "row" or (kind is None and "table_name" in data and "method" in data):
            return _new(RowChange, (channel, payload, pid, source))
        if kind == "ddl" or (kind is None and "command_tag" in data):
            return _new(SchemaChange, (channel, payload, pid, source))
    return _new(Notification, (channel, payload, pid, source))

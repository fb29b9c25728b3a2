"""Turning the installer's channel payloads into typed events -- or setting them aside.

Any role that can connect can NOTIFY any channel with any payload, so a
payload on the installer's channel is not trusted: it is parsed when the
consumer takes its batch and becomes a :class:`RowChange` or
:class:`SchemaChange` only if it is a JSON object of the installer's format
(``{"v" : 1, "kind" : "row", ...}``, or pg_events' original format, which
has no ``kind`` key) whose typed fields all have their documented types.
Anything else -- not JSON, nested past the parser's depth, a list, a field
of the wrong type, a ``method`` that is no SQL command -- is *set aside*:
delivered as a plain :class:`Notification` with its payload untouched, and
reported on the ``trio_pgevents.decode`` logger, a few lines at most per
interval however many arrive (:class:`SetAsideLog`).

Parsing on delivery rather than on first field access costs the consumer
one parse per event (msgspec: ~0.8 us for a 470-byte row payload); in
exchange the event's class can be trusted, and the parsed ``data`` is
cached on the event, so reading fields costs nothing more.
"""

from __future__ import annotations

from collections.abc import Callable

from ._events import Event, Notification, RowChange, SchemaChange
from ._payload import DDL, ROW, SET_ASIDE, is_row, kind_of, parse_json, why

__all__ = ["Decoder", "decode_trigger_payload", "set_aside"]

#: Signature of a per-channel decoder: (channel, payload, pid, source) -> Event.
Decoder = Callable[[str, str, int, str], Event]

_new = tuple.__new__
_CLASSES: dict[str, type[RowChange] | type[SchemaChange]] = {ROW: RowChange, DDL: SchemaChange}


def set_aside(channel: str, payload: str, pid: int, source: str, reason: str) -> Notification:
    """Deliver ``payload`` as a plain :class:`Notification`, and say why (rate-limited)."""
    SET_ASIDE.note(channel, payload, reason)
    return _new(Notification, (channel, payload, pid, source))


def decode_trigger_payload(channel: str, payload: str, pid: int, source: str) -> Event:
    """Decode a payload sent on an installer channel. Never raises.

    Returns a :class:`RowChange` or :class:`SchemaChange` whose typed fields
    all have their documented types. Anything else that arrives on the
    channel -- a hand-written NOTIFY, or a payload built to break consumers --
    is returned as a :class:`Notification` (its payload untouched) and
    logged as set aside, at a limited rate.
    """
    try:
        data = parse_json(payload)
    except Exception as exc:  # RecursionError, UnicodeEncodeError...: whatever a payload causes
        return set_aside(channel, payload, pid, source, f"not JSON ({why(exc)})")
    # The installer's row events, inline: this runs for every event (benchmarks/decoded.py).
    if type(data) is dict and data.get("kind") == ROW and is_row(data):
        cls: type[RowChange] | type[SchemaChange] = RowChange
    else:
        try:
            cls = _CLASSES[kind_of(data)]
        except Exception as exc:  # PayloadError; anything else would be a bug, no reason to stop
            return set_aside(channel, payload, pid, source, str(exc))
    event = _new(cls, (channel, payload, pid, source))
    # Cached as the event's data: fields are read without parsing again.
    event.__dict__["data"] = data
    return event

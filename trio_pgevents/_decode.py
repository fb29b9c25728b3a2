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

Checking on delivery rather than on first field access costs the consumer
one pass over each payload; in exchange the event's class can be trusted.
A row event of the installer's format is checked by msgspec in C as it
parses the envelope (``_payload.row_envelope``: ~0.5 us for a 450-byte
payload); its rows stay text until read (``RowChange.new_data``, typed by
column on a LISTEN stream) and ``data`` is parsed only if read. Anything
else -- DDL events, pg_events' format, payloads that are no event -- takes
the full path: parsed, checked by :func:`_payload.kind_of`, ``data`` cached.
"""

from __future__ import annotations

from collections.abc import Callable

from ._events import Event, Notification, RowChange, SchemaChange
from ._payload import DDL, ROW, SET_ASIDE, is_row, kind_of, parse_json, row_envelope, why

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
    envelope = row_envelope(payload)
    if envelope is not None:  # the installer's row events: this runs for every event
        row_event = _new(RowChange, (channel, payload, pid, source))
        event_dict = row_event.__dict__
        event_dict["_env"] = envelope  # fields read from it; rows parsed when read
        event_dict["method"] = envelope.method
        return row_event
    try:
        data = parse_json(payload)
    except Exception as exc:  # RecursionError, UnicodeEncodeError...: whatever a payload causes
        return set_aside(channel, payload, pid, source, f"not JSON ({why(exc)})")
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

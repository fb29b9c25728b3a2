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

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ._errors import PayloadError
from ._events import _METHODS, Event, Notification, RowChange, SchemaChange, _why, parse_json
from ._secrets import get_logger

__all__ = [
    "Decoder",
    "FORMAT_VERSION",
    "PayloadError",
    "SetAsideLog",
    "decode_trigger_payload",
    "set_aside",
]

logger = get_logger("trio_pgevents.decode")

#: Signature of a per-channel decoder: (channel, payload, pid, source) -> Event.
Decoder = Callable[[str, str, int, str], Event]

#: The version of the payload format the installer's functions emit.
FORMAT_VERSION = 1

_new = tuple.__new__
_NONE = type(None)

# The typed fields of each event class and the types their values may have (a missing key
# reads as None): what _row_ok/_ddl_ok check, unrolled, and _first_problem explains. Exact
# JSON types (``type(value) in allowed``), so a bool is not an int and nothing unhashable is
# ever looked up.
_ROW_FIELDS: tuple[tuple[str, frozenset[type]], ...] = (
    ("table_schema", frozenset({str, _NONE})),
    ("table_name", frozenset({str})),
    ("method", frozenset({str})),
    ("old_data", frozenset({dict, _NONE})),
    ("new_data", frozenset({dict, _NONE})),
    ("session_user", frozenset({str, _NONE})),
    ("query", frozenset({str, _NONE})),
    ("truncated", frozenset({bool, _NONE})),
    ("id", frozenset({int, _NONE})),
    ("txid", frozenset({int, _NONE})),
    ("lsn", frozenset({str, _NONE})),
)
_DDL_FIELDS: tuple[tuple[str, frozenset[type]], ...] = (
    ("command_tag", frozenset({str})),
    ("object_type", frozenset({str, _NONE})),
    ("object_identity", frozenset({str, _NONE})),
    ("schema_name", frozenset({str, _NONE})),
    ("object_name", frozenset({str, _NONE})),
)
_TEXT = frozenset({str, _NONE})
_ROW = frozenset({dict, _NONE})
_FLAG = frozenset({bool, _NONE})
_INT = frozenset({int, _NONE})


class SetAsideLog:
    """Warnings about payloads set aside, rate-limited so a flood cannot flood the log.

    The first ``burst`` payloads of an ``interval`` are logged one by one
    (channel, why, and the first 100 characters of the payload -- never all
    of it); the rest are counted, and the next one set aside after the
    interval logs one summary line with the count. Shared by every stream of
    the process (decoders are plain functions); safe to call from threads.

    Args:
        log: where the lines go.
        outcome: what happened to such a payload, as the lines say it.
        burst: lines per interval before they are counted instead.
        interval: seconds.
        clock: monotonic seconds (tests pass a fake one).
    """

    def __init__(
        self,
        log: logging.Logger,
        outcome: str,
        *,
        burst: int = 10,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = log
        self.outcome = outcome
        self.burst = burst
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        #: Payloads noted since the process started (or :meth:`reset`).
        self.total = 0
        self._window_start = clock()
        self._logged = 0
        self._suppressed = 0

    def reset(self) -> None:
        """Start afresh: counters to zero, a new burst available."""
        with self._lock:
            self.total = 0
            self._window_start = self._clock()
            self._logged = 0
            self._suppressed = 0

    def note(self, channel: str, payload: str, reason: str) -> None:
        """Count one payload set aside; log it, or a summary, if the rate allows."""
        with self._lock:
            self.total += 1
            total = self.total
            now = self._clock()
            summary, elapsed = 0, 0.0
            if now - self._window_start >= self.interval:
                summary, elapsed = self._suppressed, now - self._window_start
                self._window_start, self._logged, self._suppressed = now, 0, 0
            if self._logged < self.burst:
                self._logged += 1
                single = True
                last = self._logged == self.burst
            else:
                self._suppressed += 1
                single = last = False
        # Log outside the lock: handlers may be slow.
        if summary:
            self.log.warning(
                "%s more payloads %s in the last %.0fs (not logged one by one; %s in all)",
                f"{summary:,}",
                self.outcome,
                elapsed,
                f"{total:,}",
            )
        if single:
            self.log.warning(
                "payload on channel %r %s: %s; it starts %r%s%s",
                channel,
                self.outcome,
                reason,
                payload[:100],
                f" ({len(payload):,} characters)" if len(payload) > 100 else "",
                f" (from now on such payloads are counted, reported every {self.interval:g}s)"
                if last
                else "",
            )


#: Payloads on a decoded channel that were not events (delivered as Notifications).
SET_ASIDE = SetAsideLog(logger, "set aside: not a valid event, delivered as a Notification")
#: Events built from payload text (not by a decoder) whose payload is not JSON.
UNPARSED = SetAsideLog(logger, "is not JSON: the event's fields are empty")


def set_aside(channel: str, payload: str, pid: int, source: str, reason: str) -> Notification:
    """Deliver ``payload`` as a plain :class:`Notification`, and say why (rate-limited)."""
    SET_ASIDE.note(channel, payload, reason)
    return _new(Notification, (channel, payload, pid, source))


def _first_problem(data: dict[str, Any], fields: tuple[tuple[str, frozenset[type]], ...]) -> str:
    """Why ``data`` failed the check: the first field of the wrong type (slow path only)."""
    for key, allowed in fields:
        value = data.get(key)
        if type(value) not in allowed:
            return f"{key} is {'missing' if key not in data else type(value).__name__}"
    return "method is not INSERT, UPDATE, DELETE or TRUNCATE"


def _row_ok(data: dict[str, Any]) -> bool:
    """True if every typed field of a row event has its documented type."""
    # One expression, unrolled: this runs for every row event (see benchmarks/decoded.py).
    get = data.get
    method = get("method")
    return (
        type(method) is str
        and method in _METHODS
        and type(get("table_name")) is str
        and type(get("table_schema")) in _TEXT
        and type(get("old_data")) in _ROW
        and type(get("new_data")) in _ROW
        and type(get("session_user")) in _TEXT
        and type(get("query")) in _TEXT
        and type(get("truncated")) in _FLAG
        and type(get("id")) in _INT
        and type(get("txid")) in _INT
        and type(get("lsn")) in _TEXT
    )


def _ddl_ok(data: dict[str, Any]) -> bool:
    """True if every typed field of a DDL event has its documented type."""
    get = data.get
    return (
        type(get("command_tag")) is str
        and type(get("object_type")) in _TEXT
        and type(get("object_identity")) in _TEXT
        and type(get("schema_name")) in _TEXT
        and type(get("object_name")) in _TEXT
    )


def _classify(data: Any) -> type[RowChange] | type[SchemaChange]:
    """The event class for parsed ``data``; raise :class:`PayloadError` saying why it is none."""
    if type(data) is not dict:
        raise PayloadError(f"JSON {type(data).__name__}, not an object")
    kind = data.get("kind")
    # pg_events' own format has no "kind": it is recognised by its keys.
    if kind == "row" or (kind is None and "table_name" in data and "method" in data):
        if _row_ok(data):
            return RowChange
        raise PayloadError(f"a row event whose {_first_problem(data, _ROW_FIELDS)}")
    if kind == "ddl" or (kind is None and "command_tag" in data):
        if _ddl_ok(data):
            return SchemaChange
        raise PayloadError(f"a DDL event whose {_first_problem(data, _DDL_FIELDS)}")
    shown = repr(kind)[:40] if type(kind) is str else type(kind).__name__
    raise PayloadError(f"an object that is no row or DDL event (kind {shown})")


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
        return set_aside(channel, payload, pid, source, f"not JSON ({_why(exc)})")
    # The installer's row events, inline: this runs for every event (benchmarks/decoded.py).
    if type(data) is dict and data.get("kind") == "row" and _row_ok(data):
        cls: type[RowChange] | type[SchemaChange] = RowChange
    else:
        try:
            cls = _classify(data)
        except Exception as exc:  # PayloadError; anything else would be a bug, no reason to stop
            return set_aside(channel, payload, pid, source, str(exc))
    event = _new(cls, (channel, payload, pid, source))
    # Cached as the event's data: fields are read without parsing again.
    event.__dict__["data"] = data
    return event

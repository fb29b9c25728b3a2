"""Typed, immutable event objects.

Events are built on the hot path (one per notification), so they are tuple
subclasses created with ``tuple.__new__``: measured in ``benchmarks/`` that is
the cheapest immutable object Python offers (a frozen dataclass costs ~4x
more). Fields are read through the C accessor ``collections.namedtuple`` uses
(``_tuplegetter``; ~2x faster than a ``property(itemgetter(i))``).

Layout of every event tuple: ``(channel, payload, pid, source, *extra)``.

A payload is text anyone who can connect may have sent, so every typed field
of :class:`RowChange` and :class:`SchemaChange` returns its documented type
whatever the payload held: the LISTEN path only builds those classes from
payloads it checked (see ``_decode``; the format is ``_payload``); events built otherwise (``from_data``,
a custom decoder, the durable outbox) are guarded field by field here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeAlias, TypeVar, overload

import msgspec

from ._payload import METHODS, UNPARSED, envelope_text, parse_json, why
from ._rows import envelope_row
from ._values import ServerText as ServerText

try:  # the C field accessor namedtuple uses: one descriptor call per field read
    from _collections import _tuplegetter  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - other Pythons

    def _tuplegetter(index: int, doc: str) -> Any:
        return property(itemgetter(index), doc=doc)


__all__ = [
    "AnyEvent",
    "Method",
    "ServerText",
    "Event",
    "Notification",
    "Overflow",
    "RowChange",
    "SchemaChange",
    "StreamGap",
]

_new = tuple.__new__


_T = TypeVar("_T")


class _cached(Generic[_T]):
    """``functools.cached_property`` without its lock (Python 3.11 takes an RLock per first read).

    Events are immutable and each is read by one task at a time; two racing
    first reads would compute the same value twice, which is harmless.
    """

    def __init__(self, compute: Callable[[Any], _T]) -> None:
        self._compute = compute
        self._name = compute.__name__
        self.__doc__ = compute.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> _cached[_T]: ...

    @overload
    def __get__(self, obj: object, owner: type | None = None) -> _T: ...

    def __get__(self, obj: object | None, owner: type | None = None) -> _T | _cached[_T]:
        if obj is None:
            return self
        value = self._compute(obj)
        obj.__dict__[self._name] = value
        return value


#: What a :class:`RowChange` did: a trigger's or the WAL's operation, or ``READ`` for a
#: row of a change stream's initial snapshot (``""`` only in a hand-built event without one).
Method: TypeAlias = Literal["INSERT", "UPDATE", "DELETE", "TRUNCATE", "READ", ""]
_EVENT_METHODS = METHODS | {"READ"}


class Event(tuple[Any, ...]):
    """Base class of everything a stream delivers.

    Events are immutable. ``source`` names the database the event came from,
    as a SQLAlchemy URL with the password hidden.
    """

    __slots__ = ()

    if TYPE_CHECKING:

        @property
        def channel(self) -> str:
            """The NOTIFY channel the event arrived on."""

        @property
        def payload(self) -> str:
            """The NOTIFY payload, exactly as sent (text, at most ~8000 bytes)."""

        @property
        def pid(self) -> int:
            """Process id of the server backend that sent the notification."""

        @property
        def source(self) -> str:
            """Which database the event came from (URL, password hidden)."""

    else:
        channel = _tuplegetter(0, "The NOTIFY channel the event arrived on.")
        payload = _tuplegetter(1, "The NOTIFY payload, exactly as sent.")
        pid = _tuplegetter(2, "Backend process id of the sender.")
        source = _tuplegetter(3, "Which database (URL, password hidden).")

    def __new__(cls, channel: str, payload: str, pid: int, source: str) -> Event:
        return _new(cls, (channel, payload, pid, source))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(channel={self[0]!r}, payload={self[1]!r}, "
            f"pid={self[2]!r}, source={self[3]!r})"
        )

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash((type(self).__name__, *self))

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), tuple(self)))


def _rebuild(cls: type[Event], items: tuple[Any, ...]) -> Event:
    return _new(cls, items)


class Notification(Event):
    """A plain NOTIFY on a channel that carries no trio_pgevents format."""

    __slots__ = ()


class _DecodedEvent(Event):
    """An event whose payload is JSON, decoded lazily on first field access.

    Subclasses deliberately have a ``__dict__`` (no ``__slots__``) so the parsed
    payload can be cached; attribute assignment is still refused.
    """

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    @_cached
    def data(self) -> dict[str, Any]:
        """The decoded JSON payload (every key, including ones not typed here).

        Numbers that are not integers are ``Decimal`` (every digit the server
        sent); :attr:`RowChange.new_data` and ``old_data`` type each value by
        its column. Events from a LISTEN stream were parsed (and checked) on delivery; an
        event built from its payload text (``RowChange(channel, payload, ...)``,
        a custom decoder, the durable outbox) is parsed here, on first access.
        Its payload may not be JSON at all: then ``data`` is ``{}`` and the
        typed fields hold their empty values -- reading them never raises.
        """
        event_dict = self.__dict__
        build = event_dict.get("_build")
        if build is not None:
            # A change stream's event, decoded on first access (see _cdc.pgoutput).
            # What it was built from is let go (the message's bytes among it).
            built: dict[str, Any] = build[0](build, event_dict.get("new_data"))
            event_dict["data"] = built
            event_dict.pop("_build", None)
            return built
        try:
            decoded = parse_json(self[1])
        except Exception as exc:  # RecursionError too: anything a payload can cause
            UNPARSED.note(self[0], str(self[1]), why(exc))
            return {}
        return decoded if isinstance(decoded, dict) else {"value": decoded}

    @classmethod
    def from_data(cls, channel: str, data: dict[str, Any], pid: int, source: str) -> Any:
        """Build an event from already-decoded data (payload is serialised lazily)."""
        event = _new(cls, (channel, None, pid, source))
        event.__dict__["data"] = data
        return event

    if TYPE_CHECKING:

        @property
        def payload(self) -> str: ...

    else:

        @property
        def payload(self) -> str:
            """The payload text (re-serialised JSON for events built from data)."""
            text = self[1]
            if text is None:
                text = self.__dict__.get("_payload")
                if text is None:
                    text = json.dumps(self.data, separators=(",", ":"), default=str)
                    self.__dict__["_payload"] = text
            return text  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(channel={self[0]!r}, data={self.data!r}, source={self[3]!r})"

    # Events built with from_data() hold no payload text in the tuple: compare,
    # hash and pickle them by their (serialised) data, so two different
    # changes never compare equal and a pickled event keeps its data.
    def _identity(self) -> tuple[Any, ...]:
        return (self[0], self.payload, self[2], self[3], *self[4:])

    def __eq__(self, other: object) -> bool:
        if type(self) is not type(other):
            return False
        assert isinstance(other, _DecodedEvent)
        return self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash((type(self).__name__, *self._identity()))

    def __reduce__(self) -> tuple[Any, ...]:
        if self[1] is not None:
            return (_rebuild, (type(self), tuple(self)))
        return (_rebuild_from_data, (type(self), tuple(self), self.data))


def _rebuild_from_data(cls: type[_DecodedEvent], items: tuple[Any, ...], data: dict[str, Any]) -> Event:
    event = _new(cls, items)
    event.__dict__["data"] = data
    return event


class RowChange(_DecodedEvent):
    """A row-level data change, from a trigger (or from logical replication).

    The fields are pg_events' payload keys. ``old_data`` is ``None`` for
    INSERT, ``new_data`` is ``None`` for DELETE; both are ``None`` for TRUNCATE.
    Every field has its documented type, whatever the payload held: a value
    of another type (possible only in events built by hand, with
    ``from_data`` or a custom decoder) reads as ``""``, ``None`` or ``False``.
    """

    def _get(self, key: str) -> Any:
        # A LISTEN stream's row event holds its checked envelope (see _decode): no parse.
        envelope = self.__dict__.get("_env")
        return getattr(envelope, key) if envelope is not None else self.data.get(key)

    @property
    def table_schema(self) -> str:
        """Schema of the changed table."""
        value = self._get("table_schema")
        return value if isinstance(value, str) else ""

    @property
    def table_name(self) -> str:
        """Name of the changed table."""
        value = self._get("table_name")
        return value if isinstance(value, str) else ""

    @_cached
    def method(self) -> Method:
        """``INSERT``, ``UPDATE``, ``DELETE``, ``TRUNCATE``, or ``READ`` (a change stream's snapshot).

        ``""`` only for hand-built events whose payload has none.
        """
        method = self._get("method")
        # Type first: a list is not hashable, and ``in`` a frozenset would raise.
        return method if type(method) is str and method in _EVENT_METHODS else ""  # type: ignore[return-value]

    @_cached
    def old_data(self) -> dict[str, Any] | None:
        """The row before the change (UPDATE, DELETE), or ``None``; values typed by column.

        Values are converted by the column's type, the same on every path
        (see :mod:`trio_pgevents._columns`: ``numeric`` as ``Decimal``,
        timestamps as ``datetime``, ``uuid`` as ``UUID``...).
        """
        return self._row("old_data")

    @_cached
    def new_data(self) -> dict[str, Any] | None:
        """The row after the change (INSERT, UPDATE, READ), or ``None``; values typed by column."""
        event_dict = self.__dict__
        build = event_dict.get("_build")
        if build is not None:
            # A change stream's INSERT not decoded yet: parse the row alone (a change
            # stream consumer's hot path); data, if read, is built around it.
            row: dict[str, Any] = build[1](build)
            return row
        return self._row("new_data")

    def _row(self, key: str) -> dict[str, Any] | None:
        event_dict = self.__dict__
        envelope = event_dict.get("_env")
        if envelope is not None:
            return envelope_row(self, getattr(envelope, key))
        value = self.data.get(key)
        if not isinstance(value, dict):
            return None
        convert = event_dict.get("_row_types")
        return convert(value) if convert is not None else value

    @property
    def session_user(self) -> str | None:
        """The session user that made the change."""
        value = self._get("session_user")
        return value if isinstance(value, str) else None

    @property
    def query(self) -> str | None:
        """The top-level statement text (may be cut, or left out by option)."""
        value = self._get("query")
        if type(value) is msgspec.Raw:  # the envelope keeps it as JSON text
            return envelope_text(value)
        return value if isinstance(value, str) else None

    @property
    def truncated(self) -> bool:
        """True when the row data was reduced to fit the NOTIFY size limit."""
        return self._get("truncated") is True

    @property
    def id(self) -> int | None:
        """Durable mode: the event's id in the outbox table."""
        value = self._get("id")
        return value if isinstance(value, int) and not isinstance(value, bool) else None  # true is no id

    @property
    def txid(self) -> int | None:
        """Durable and CDC modes: the id of the transaction that made the change."""
        value = self._get("txid")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def lsn(self) -> str | None:
        """CDC mode: the WAL position of the change's commit (``X/Y`` text)."""
        value = self._get("lsn")
        return value if isinstance(value, str) else None


class SchemaChange(_DecodedEvent):
    """A DDL event trigger's event, with pg_events' keys.

    Read any key through :attr:`data`; the common ones are typed here.
    """

    @property
    def command_tag(self) -> str:
        """E.g. ``CREATE TABLE``, ``ALTER TABLE``, ``DROP TABLE``."""
        value = self.data.get("command_tag")
        return value if isinstance(value, str) else ""

    @property
    def object_type(self) -> str:
        """E.g. ``table``, ``index``, ``function``."""
        value = self.data.get("object_type")
        return value if isinstance(value, str) else ""

    @property
    def object_identity(self) -> str:
        """Schema-qualified, quoted identity of the object (``""`` when Postgres gives none)."""
        value = self.data.get("object_identity")
        return value if isinstance(value, str) else ""

    @property
    def schema_name(self) -> str | None:
        """Schema of the object, when it has one."""
        value = self.data.get("schema_name")
        return value if isinstance(value, str) else None

    @property
    def object_name(self) -> str | None:
        """Name of the object (``sql_drop`` events), when known."""
        value = self.data.get("object_name")
        return value if isinstance(value, str) else None

    @property
    def dependents(self) -> tuple[dict[str, Any], ...]:
        """A drop's event: the objects dropped along with it (sequence, types, constraints...).

        Each is a dict of ``object_type``, ``schema_name``, ``object_name`` and
        ``object_identity``. Empty for other events, and with
        ``install(ddl_events="all")``, where each dropped object is an event
        of its own. ``data["truncated"]`` is true when the list was cut to
        fit NOTIFY.
        """
        value = self.data.get("dependents")
        if not isinstance(value, list):
            return ()
        return tuple(item for item in value if isinstance(item, dict))


class StreamGap(Event):
    """Control event: the connection to ``source`` was lost and is back.

    Notifications sent while disconnected may have been missed (a durable
    stream sets ``replayed`` because it re-read them). Its ``channel`` and
    ``payload`` are empty strings and ``pid`` is 0.
    """

    __slots__ = ()

    if TYPE_CHECKING:

        @property
        def disconnected_at(self) -> datetime:
            """When the connection was found dead (UTC)."""

        @property
        def reconnected_at(self) -> datetime:
            """When listening resumed (UTC)."""

        @property
        def reason(self) -> str:
            """Why the connection was considered lost."""

        @property
        def replayed(self) -> bool:
            """True if missed events were re-read (durable mode): nothing lost."""

    else:
        disconnected_at = _tuplegetter(4, "When the connection was found dead.")
        reconnected_at = _tuplegetter(5, "When listening resumed.")
        reason = _tuplegetter(6, "Why the connection was considered lost.")
        replayed = _tuplegetter(7, "True if missed events were re-read.")

    def __new__(
        cls,
        source: str,
        disconnected_at: datetime,
        reconnected_at: datetime,
        reason: str,
        replayed: bool = False,
    ) -> StreamGap:
        return _new(cls, ("", "", 0, source, disconnected_at, reconnected_at, reason, replayed))

    @property
    def duration(self) -> float:
        """Seconds between losing and regaining the connection."""
        return (self.reconnected_at - self.disconnected_at).total_seconds()

    def __repr__(self) -> str:
        return (
            f"StreamGap(source={self[3]!r}, disconnected_at={self[4].isoformat()}, "
            f"reconnected_at={self[5].isoformat()}, reason={self[6]!r}, replayed={self[7]!r})"
        )


class Overflow(Event):
    """Control event: ``dropped`` events were discarded (``overflow="drop-oldest"``).

    It is delivered in place of the discarded events, i.e. before the oldest
    event that was kept. ``channel``/``payload`` are empty, ``pid`` is 0.
    """

    __slots__ = ()

    if TYPE_CHECKING:

        @property
        def dropped(self) -> int:
            """How many events were discarded."""

    else:
        dropped = _tuplegetter(4, "How many events were discarded.")

    def __new__(cls, source: str, dropped: int) -> Overflow:
        return _new(cls, ("", "", 0, source, dropped))

    def __repr__(self) -> str:
        return f"Overflow(dropped={self[4]!r}, source={self[3]!r})"


#: Every event a stream can deliver, for an exhaustive ``match`` (each class is final in practice).
AnyEvent: TypeAlias = Notification | RowChange | SchemaChange | StreamGap | Overflow

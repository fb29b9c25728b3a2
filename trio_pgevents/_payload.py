"""The payload format, defined once: version, kinds, keys and their types.

Every event the installer's SQL emits -- a row change sent with NOTIFY, a
row change written to the durable outbox, a DDL event -- is a JSON object
``{"v": FORMAT_VERSION, "kind": "row" | "ddl", <keys>}``. This module is the
one place that says which keys each kind has and what types their values
may take. From it come:

- the SQL that builds the objects (:func:`object_sql`: the installer's
  templates hold placeholders, never key names);
- the checks of what arrives (:func:`is_row`, :func:`is_ddl`, compiled from
  the key tables; :func:`kind_of` says which kind an object is, from its
  ``kind`` field -- or, for pg_events' original format, which has none, from
  the keys it has);
- the durable reader's server-side check (:func:`jsonb_check_sql`);
- the row event's envelope (:func:`row_envelope`): the same check, made by
  msgspec in C while it parses, the rows left unparsed (``msgspec.Raw``).

It also parses payload text (:func:`parse_json`) and keeps the rate-limited
log of payloads set aside (:class:`SetAsideLog`).
"""

from __future__ import annotations

import json
import logging
import struct
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

import msgspec

from ._errors import PayloadError
from ._secrets import get_logger

__all__ = [
    "DDL",
    "DDL_KEYS",
    "FORMAT_VERSION",
    "METHODS",
    "NULL_ROW",
    "ROW",
    "ROW_KEYS",
    "SET_ASIDE",
    "UNPARSED",
    "Key",
    "SetAsideLog",
    "envelope_text",
    "first_problem",
    "is_ddl",
    "is_row",
    "jsonb_check_sql",
    "kind_of",
    "object_sql",
    "parse_json",
    "row_envelope",
    "why",
]

logger = get_logger("trio_pgevents.decode")

#: The version of the payload format the installer's functions emit (the ``v`` key).
FORMAT_VERSION = 1
#: The ``kind`` of a row change event, and of a DDL event.
ROW = "row"
DDL = "ddl"
#: The values of a row event's ``method``.
METHODS = frozenset({"INSERT", "UPDATE", "DELETE", "TRUNCATE"})

_NONE = type(None)
#: A JSON value's Python type after parsing -> its ``jsonb_typeof`` name.
_JSONB_TYPES: dict[type, str] = {
    str: "string",
    dict: "object",
    list: "array",
    bool: "boolean",
    int: "number",
    _NONE: "null",
}


@dataclass(frozen=True)
class Key:
    """One key of the payload format.

    Attributes:
        name: the JSON key (and the event's attribute of that name).
        types: the Python types its parsed value may have (exact: a bool is
            not an int); ``NoneType`` means JSON null, or the key missing.
        sql_type: the SQL type of the value the installer's functions build
            (a missing value is a NULL of this type).
        emitted: written by the installer's functions; False for keys added on
            the way (the outbox reader's ``id``/``txid``, the change stream's ``lsn``).
        optional: written only sometimes (left out of an object unless given).
        long: text that may be long and is rarely read: the envelope
            (:func:`row_envelope`) checks it is a string and keeps its JSON text.
    """

    name: str
    types: frozenset[type]
    sql_type: str = "text"
    emitted: bool = True
    optional: bool = False
    long: bool = False


_TEXT: frozenset[type] = frozenset({str, _NONE})
_NAME: frozenset[type] = frozenset({str})
_ROW_DATA: frozenset[type] = frozenset({dict, _NONE})
_FLAG: frozenset[type] = frozenset({bool, _NONE})
_INT: frozenset[type] = frozenset({int, _NONE})
_LIST: frozenset[type] = frozenset({list, _NONE})
#: An oid: json_build_object writes it as a string ("1259"); a number is accepted too.
_OID: frozenset[type] = frozenset({str, int, _NONE})

#: The keys of a row event, in the order the installer writes them.
ROW_KEYS: tuple[Key, ...] = (
    Key("table_schema", _TEXT),
    Key("table_name", _NAME),
    Key("session_user", _TEXT),
    Key("method", _NAME),
    Key("old_data", _ROW_DATA, "json"),
    Key("new_data", _ROW_DATA, "json"),
    Key("query", _TEXT, long=True),
    Key("truncated", _FLAG, "bool"),
    Key("keys_only", _FLAG, "bool", optional=True),
    Key("error", _TEXT, optional=True),
    Key("id", _INT, "int8", emitted=False),
    Key("txid", _INT, "int8", emitted=False),
    Key("lsn", _TEXT, emitted=False),
)
#: The keys of a DDL event (pg_events' keys), in the order the installer writes them.
DDL_KEYS: tuple[Key, ...] = (
    Key("classid", _OID, "oid"),
    Key("objid", _OID, "oid"),
    Key("objsubid", _INT, "int4"),
    Key("command_tag", _NAME),
    Key("object_type", _TEXT),
    Key("object_name", _TEXT),
    Key("object_identity", _TEXT),
    Key("schema_name", _TEXT),
    Key("original", _FLAG, "bool"),
    Key("normal", _FLAG, "bool"),
    Key("in_extension", _FLAG, "bool"),
    Key("is_temporary", _FLAG, "bool"),
    Key("session_user", _TEXT),
    # A drop's event (pg_events' stream): the objects dropped along with the ones the
    # statement named, each {object_type, schema_name, object_name, object_identity}.
    Key("dependents", _LIST, "json", optional=True),
    # The dependents list was cut to fit NOTIFY.
    Key("truncated", _FLAG, "bool", optional=True),
)
_KEYS = {ROW: ROW_KEYS, DDL: DDL_KEYS}


# ---- the SQL that builds events ---------------------------------------------------------


def object_sql(kind: str, values: Mapping[str, str], *, jsonb: bool = False, header: bool = True) -> str:
    """SQL text of a ``json_build_object`` call building an event of ``kind``.

    Args:
        kind: :data:`ROW` or :data:`DDL`.
        values: SQL expressions by key; an emitted key not given is a typed
            NULL, an optional one is left out.
        jsonb: build ``jsonb`` (old/new row data as jsonb too).
        header: start with ``v`` and ``kind``; False builds just the keys given
            (an addition to an object built with the header).

    Raises:
        KeyError: ``values`` names a key the format does not have (a typo in
            the installer's SQL is an import-time error, not a silent new key).
    """
    keys = {key.name: key for key in _KEYS[kind] if key.emitted}
    unknown = set(values) - set(keys)
    if unknown:
        raise KeyError(f"not keys of a {kind} event: {sorted(unknown)}")
    parts = [f"'v', {FORMAT_VERSION}", f"'kind', '{kind}'"] if header else []
    for name, key in keys.items():
        if name in values:
            parts.append(f"'{name}', {values[name]}")
        elif header and not key.optional:
            sql_type = "jsonb" if jsonb and key.sql_type == "json" else key.sql_type
            parts.append(f"'{name}', NULL::pg_catalog.{sql_type}")
    function = "jsonb_build_object" if jsonb else "json_build_object"
    return f"pg_catalog.{function}({', '.join(parts)})"


def jsonb_check_sql(value: str, kind: str, names: tuple[str, ...]) -> str:
    """SQL: ``value`` (a jsonb) is an object of ``kind`` whose keys ``names`` have their types.

    A ``method`` must also be one of :data:`METHODS`. Used by the durable reader
    (the server checks each row, in C, so the reader parses nothing up front).
    """
    keys = {key.name: key for key in _KEYS[kind]}
    checks = [
        f"pg_catalog.jsonb_typeof({value}) OPERATOR(pg_catalog.=) 'object'",
        f"{value} OPERATOR(pg_catalog.->>) 'kind' OPERATOR(pg_catalog.=) '{kind}'",
    ]
    methods = ", ".join(f"'{m}'" for m in sorted(METHODS))
    for name in names:
        item = f"{value} OPERATOR(pg_catalog.->) '{name}'"
        if name == "method":  # one of the commands (only a JSON string's ->> text can be one)
            text = f"{value} OPERATOR(pg_catalog.->>) 'method'"
            checks.append(f"{text} OPERATOR(pg_catalog.=) ANY (ARRAY[{methods}])")
            continue
        allowed = ", ".join(
            f"'{_JSONB_TYPES[t]}'" for t in sorted(keys[name].types, key=_JSONB_TYPES.__getitem__)
        )
        checks.append(
            f"coalesce(pg_catalog.jsonb_typeof({item}), 'null') OPERATOR(pg_catalog.=) ANY (ARRAY[{allowed}])"
        )
    return "coalesce(" + " AND ".join(checks) + ", false)"


# ---- checking what arrives --------------------------------------------------------------


def _compile_check(keys: tuple[Key, ...], extra: str = "") -> Callable[[dict[str, Any]], bool]:
    """A function: every key of ``keys`` in ``data`` has one of its types.

    Generated (as ``namedtuple`` and ``dataclasses`` generate methods) so the
    check is one unrolled expression -- it runs for every event -- while the
    keys stay defined once, in the tables above.
    """
    namespace: dict[str, Any] = {"METHODS": METHODS}
    terms = []
    for i, key in enumerate(keys):
        if len(key.types) == 1:
            (only,) = key.types
            namespace[f"T{i}"] = only
            terms.append(f"type(get({key.name!r})) is T{i}")
        else:
            namespace[f"T{i}"] = key.types
            terms.append(f"type(get({key.name!r})) in T{i}")
    source = f"def check(data):\n    get = data.get\n    return {' and '.join(terms)}{extra}\n"
    exec(source, namespace)
    check: Callable[[dict[str, Any]], bool] = namespace["check"]
    return check


#: True if every key of a row event has its type, and ``method`` is a SQL command.
is_row = _compile_check(ROW_KEYS, " and get('method') in METHODS")
#: True if every key of a DDL event has its type.
is_ddl = _compile_check(DDL_KEYS)


def kind_of(data: Any) -> str:
    """The kind of a parsed payload (:data:`ROW` or :data:`DDL`) if it is a valid event.

    The kind comes from the ``kind`` field; pg_events' original format has
    none, and is recognised by its keys (``table_name`` and ``method``, or
    ``command_tag``).

    Raises:
        PayloadError: it is no valid event; the message says why.
    """
    if type(data) is not dict:
        raise PayloadError(f"JSON {type(data).__name__}, not an object")
    kind = data.get("kind")
    if kind == ROW or (kind is None and "table_name" in data and "method" in data):
        if is_row(data):
            return ROW
        raise PayloadError(f"a row event whose {first_problem(data, ROW)}")
    if kind == DDL or (kind is None and "command_tag" in data):
        if is_ddl(data):
            return DDL
        raise PayloadError(f"a DDL event whose {first_problem(data, DDL)}")
    shown = repr(kind)[:40] if type(kind) is str else type(kind).__name__
    raise PayloadError(f"an object that is no row or DDL event (kind {shown})")


def first_problem(data: dict[str, Any], kind: str) -> str:
    """Why ``data`` failed the check of ``kind``: the first key of the wrong type (slow path)."""
    for key in _KEYS[kind]:
        value = data.get(key.name)
        if type(value) not in key.types:
            return f"{key.name} is {'missing' if key.name not in data else type(value).__name__}"
    return "method is not INSERT, UPDATE, DELETE or TRUNCATE"


# ---- the row event's envelope, checked in C ---------------------------------------------------

#: A row that is JSON ``null`` (an INSERT's ``old_data``), as the envelope holds it.
NULL_ROW = msgspec.Raw(b"null")
_OBJECT = (ord("{"),)
_STRING = (ord('"'),)
#: The first byte of a Raw, as a 1-tuple (reads the buffer in place: half the cost of bytes()).
_first_byte = struct.Struct("B").unpack_from


def _envelope_field(key: Key) -> tuple[str, Any, Any] | tuple[str, Any]:
    """The envelope's field for ``key``: the type :func:`is_row` accepts, said to msgspec."""
    if key.name == "method":
        return ("method", Literal[tuple(sorted(METHODS))])  # required, one of the commands
    if key.types == _ROW_DATA or key.long:  # msgspec keeps its text; row_envelope checks its type
        return (key.name, msgspec.Raw, NULL_ROW)
    (only,) = key.types - {_NONE}
    if _NONE not in key.types:
        return (key.name, only)  # required
    return (key.name, only | None, None)  # null and missing are the same to is_row


#: A row event of the installer's format (``"kind": "row"``), its typed keys checked as
#: :func:`is_row` checks them. Other keys are skipped; not GC-tracked (it holds no cycle).
RowEnvelope: Any = msgspec.defstruct(
    "RowEnvelope",
    [("kind", Literal["row"]), *(_envelope_field(key) for key in ROW_KEYS)],
    gc=False,
    frozen=True,
    kw_only=True,
    module=__name__,
)
_decode_envelope = msgspec.json.Decoder(RowEnvelope).decode
# row_envelope checks the long texts' type by hand: a key made long must be added there.
if [(key.name, key.types) for key in ROW_KEYS if key.long] != [("query", _TEXT)]:
    raise AssertionError("row_envelope checks that query, and only query, is a long text")
_max_digits = sys.get_int_max_str_digits
_LEAST_DIGIT_LIMIT = 640  # the lowest integer digit limit Python allows (0: no limit)


def row_envelope(text: str) -> Any:
    """``text``'s :data:`RowEnvelope` if it is a valid row event of the installer's format, else None.

    Accepts exactly what :func:`is_row` accepts of an object with ``"kind":
    "row"`` (the types of its keys, ``method`` one of :data:`METHODS`, the
    rows objects or null), without building the object: the rows stay text
    (``msgspec.Raw``, :data:`NULL_ROW` when null), parsed when read. msgspec
    checks that the whole text is valid JSON as it skips them. None means
    "not sure": the caller takes the full path (:func:`parse_json`,
    :func:`kind_of`), which also says why a payload is no event. So does a
    text past the interpreter's integer digit limit: a row holding such an
    integer would be valid JSON that no parser here can turn into values.
    """
    try:
        if len(text) > _LEAST_DIGIT_LIMIT and len(text) > (_max_digits() or len(text)):
            return None
        envelope = _decode_envelope(text)
    except Exception:  # not JSON, not a row event, a field of another type, not a str...
        return None
    # The rows: objects or null (a list, a string... is no row). Unrolled: every event.
    row = envelope.new_data
    if row != NULL_ROW and _first_byte(row) != _OBJECT:
        return None
    row = envelope.old_data
    if row != NULL_ROW and _first_byte(row) != _OBJECT:
        return None
    query = envelope.query  # a long text: its JSON text, checked, not copied (see Key.long)
    if query != NULL_ROW and _first_byte(query) != _STRING:
        return None
    return envelope


def envelope_text(raw: msgspec.Raw) -> str | None:
    """A :attr:`Key.long` text of a :data:`RowEnvelope`, from its JSON text (checked already)."""
    return None if raw == NULL_ROW else msgspec.json.decode(raw, type=str)


# ---- parsing ----------------------------------------------------------------------------------

_msgspec_decode = msgspec.json.Decoder().decode
_msgspec_decode_exact = msgspec.json.Decoder(float_hook=Decimal).decode


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(text: str | bytes | msgspec.Raw, *, exact: bool = True) -> Any:
    """Parse a payload's JSON text; raise an ``Exception`` (never worse) if it is not JSON.

    With ``exact`` (events' payloads) a number that is not an integer is a
    ``Decimal`` with every digit (a ``numeric`` of 12345678901234567.89 stays
    that); without, a ``float`` as ``json.loads`` gives (psycopg2-pgevents'
    events). Integers are ``int``, past 64 bits too.

    msgspec parses the installer's payloads ~3.3x faster than the stdlib
    (1.5 vs 4.8 us for a 300-byte row payload, 1.7 us with exact numbers),
    and rejects what no valid text holds (lone surrogate escapes, ``NaN``).
    Nesting deeper than the interpreter's recursion limit raises
    ``RecursionError`` -- callers catch ``Exception``, not ``ValueError``.
    Only for a number msgspec cannot hold (an integer of thousands of digits;
    without ``exact``, one past float range) is the stdlib asked; its result
    is then held to the same rules.
    """
    try:
        return _msgspec_decode_exact(text) if exact else _msgspec_decode(text)
    except msgspec.ValidationError:
        pass
    if not isinstance(text, (str, bytes)):
        text = bytes(text)  # a row's msgspec.Raw
    value = json.loads(text, parse_constant=_reject_constant, parse_float=Decimal if exact else float)
    # Lone surrogates: the stdlib accepts them, UTF-8 cannot encode them (printing would fail).
    json.dumps(value, ensure_ascii=False, default=str).encode("utf-8")
    return value


def why(exc: BaseException) -> str:
    """One short line saying why parsing failed."""
    return f"{type(exc).__name__}: {str(exc)[:100]}"


# ---- payloads set aside -------------------------------------------------------------------------


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

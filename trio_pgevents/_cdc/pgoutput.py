"""Decoder of ``pgoutput`` logical replication messages into :class:`RowChange` events.

Pure code, no I/O: feed it the payload of each XLogData message (what
psycopg2's ``ReplicationMessage.payload`` holds with ``decode=False``) and it
appends events to a list. The wire format is PostgreSQL's "Logical Replication
Message Formats", protocol version 1 (Begin, Commit, Origin, Relation, Type,
Insert, Update, Delete, Truncate; Message is ignored).

Each event carries pg_events' keys (``table_schema``, ``table_name``,
``method``, ``old_data``, ``new_data``; ``session_user`` and ``query`` are
``None`` because the WAL does not record them) plus:

- ``lsn``: the commit LSN of its transaction, as ``X/Y`` text,
- ``txid``: the transaction id, epoch-extended (64-bit, what ``txid_current()``
  / ``pg_current_xact_id()`` return, as in the trigger path) when the decoder
  knows a recent full id (``xid_reference``); otherwise the WAL's 32-bit xid,
- ``commit_time``: the commit timestamp, an aware ``datetime`` in UTC.

Two events are equal (and hash alike) when they are the same change: same
slot, database, commit LSN and position in the transaction — so a change
replayed after a reconnect or restart equals its first delivery, which makes
duplicates easy to drop.

Column values are converted by type (:mod:`.values`).

A TOASTed value the server did not resend (an UPDATE that left a large value
unchanged) is taken from the old row when the old row is known (``REPLICA
IDENTITY FULL``), otherwise its key is absent from ``new_data``.

``old_data`` holds the replica identity: the full old row with ``REPLICA
IDENTITY FULL``, otherwise only the key columns (for an UPDATE that did not
change the key, those are read from the new row).
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime
from typing import Any

from .._errors import ReplicationError
from .._events import Event, RowChange, ServerText
from .._secrets import get_logger
from .values import Converter, DomainTypes, careful_row_parser, compile_row_parser, converter_for_type

__all__ = ["PgOutputDecoder", "format_lsn", "parse_lsn", "widen_xid"]

_new = tuple.__new__

logger = get_logger("trio_pgevents.cdc")

_INT16 = struct.Struct(">h")
_UINT32 = struct.Struct(">I")
_BEGIN = struct.Struct(">QqI")  # final (commit) LSN, commit timestamp, xid
_COMMIT_END = struct.Struct(">9xQ8x")  # (flags, commit LSN,) end LSN(, commit timestamp)
_INSERT_HEAD = struct.Struct(">IBh")  # relation OID, 'N', column count
_RELATION_HEAD = struct.Struct(">I")
_COLUMN_TAIL = struct.Struct(">Ii")  # type OID, type modifier

#: Seconds between the Unix epoch and PostgreSQL's (2000-01-01 UTC).
_PG_EPOCH_UNIX = 946_684_800
_fromtimestamp = datetime.fromtimestamp


def format_lsn(lsn: int) -> str:
    """``0x16B3748`` -> ``'0/16B3748'``: the text form PostgreSQL uses."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def widen_xid(xid: int, reference: int) -> int:
    """The 64-bit (epoch-extended) id of 32-bit ``xid``, given a nearby full id ``reference``.

    PostgreSQL keeps every live transaction id within 2**31 of the next one,
    so the full id is the one nearest ``reference`` whose low 32 bits are ``xid``.
    """
    delta = (xid - reference) & 0xFFFFFFFF
    if delta >= 0x80000000:
        delta -= 0x100000000
    return reference + delta


def parse_lsn(text: str) -> int:
    """``'0/16B3748'`` -> ``0x16B3748``; raises ``ValueError`` on malformed text."""
    high, sep, low = text.partition("/")
    if not sep:
        raise ValueError(f"not an LSN: {text!r}")
    return (int(high, 16) << 32) | int(low, 16)


class _Relation:
    """What a Relation message told us about a table."""

    __slots__ = ("columns", "count", "key_names", "name", "oid", "parse", "parse_carefully", "schema")

    def __init__(
        self,
        oid: int,
        schema: str,
        name: str,
        columns: list[tuple[str, Converter | None]],
        key_names: list[str],
        encoding: str,
    ) -> None:
        self.oid = oid
        self.schema = schema
        self.name = name
        self.columns = columns
        self.count = len(columns)
        self.parse = compile_row_parser(schema, name, columns, encoding)
        #: Used only when ``parse`` raised (a value it cannot convert).
        self.parse_carefully = careful_row_parser(schema, name, columns, encoding)
        self.key_names = key_names


class PgOutputDecoder:
    """Turns a stream of pgoutput messages into RowChange events.

    Args:
        channel: the events' ``channel`` (the change stream uses its slot name).
        source: the events' ``source`` (database URL, password hidden).
        encoding: Python codec of the database's server encoding.
        xid_reference: a full (64-bit) transaction id read from the server
            shortly before streaming; each Begin's 32-bit xid is widened
            relative to it (and it then follows the stream).

    State (relations seen, the open transaction) lives here, so one decoder
    serves one replication session; make a new one after reconnecting.

    The last event of each transaction also records, out of sight in its
    ``__dict__``, the end of the commit record once the Commit is decoded:
    confirming that position makes a restart skip the transaction, while
    confirming any other event's commit LSN makes it replay it whole
    (see :func:`ack_position`).
    """

    def __init__(
        self,
        channel: str,
        source: str,
        encoding: str = "utf-8",
        xid_reference: int | None = None,
        domains: DomainTypes | None = None,
    ) -> None:
        self.channel = channel
        #: The database's domains (and arrays of them) with their base types.
        self.domains = domains or {}
        #: A recent epoch-extended transaction id (None: report 32-bit xids).
        self.xid_reference = xid_reference
        self.source = source
        self.encoding = encoding
        self._relations: dict[int, _Relation] = {}
        self._in_transaction = False
        self._txn: _Transaction = [0, 0, 0, None, None]
        self._position = 0
        self._last: Event | None = None
        #: End LSN of the last transaction whose Commit was decoded.
        self.last_commit_end = 0
        #: Transactions and changes decoded (statistics).
        self.transactions = 0
        self.changes = 0

    @property
    def in_transaction(self) -> bool:
        """True between a Begin and its Commit (a transaction read only in part)."""
        return self._in_transaction

    # ---- entry point -------------------------------------------------------

    def feed(self, payload: bytes, out: list[Event]) -> None:
        """Decode one message, appending any events it produces to ``out``."""
        kind = payload[0]
        if kind == 73:  # 'I'
            self._insert(payload, out)
        elif kind == 66:  # 'B'
            self._begin(payload)
        elif kind == 67:  # 'C'
            self._commit(payload)
        elif kind == 85:  # 'U'
            self._update(payload, out)
        elif kind == 68:  # 'D'
            self._delete(payload, out)
        elif kind == 82:  # 'R'
            self._relation(payload)
        elif kind == 84:  # 'T'
            self._truncate(payload, out)
        elif kind in (79, 89, 77):  # 'O' origin, 'Y' type, 'M' message: nothing to emit
            return
        else:
            raise ReplicationError(f"unexpected pgoutput message type {chr(kind)!r} (protocol version 1)")

    # ---- transaction framing -----------------------------------------------

    def _begin(self, payload: bytes) -> None:
        final_lsn, timestamp, xid = _BEGIN.unpack_from(payload, 1)
        self._in_transaction = True
        reference = self.xid_reference
        if reference is not None:
            xid = self.xid_reference = widen_xid(xid, reference)
        # The LSN's text and the commit time are made when first asked for (most
        # transactions of a busy writer are one change nobody reads the time of).
        self._txn = [final_lsn, xid, timestamp, None, None]
        self._position = 0
        self._last = None

    def _commit(self, payload: bytes) -> None:
        (end_lsn,) = _COMMIT_END.unpack_from(payload, 1)
        last = self._last
        if last is not None:
            # Processing this event completes the transaction: confirm past it.
            last.__dict__["_ack"] = end_lsn
        self._last = None
        self._in_transaction = False
        self.last_commit_end = end_lsn
        self.transactions += 1

    # ---- schema ------------------------------------------------------------

    def _string(self, payload: bytes, pos: int) -> tuple[str, int]:
        end = payload.index(0, pos)
        raw = payload[pos:end]
        try:
            return raw.decode(self.encoding), end + 1
        except UnicodeDecodeError as exc:
            # A name the database's encoding does not cover (SQL_ASCII takes any
            # bytes): keep it, escaped, rather than stop the stream for good.
            name = ServerText(
                raw.decode(self.encoding, "backslashreplace"),
                f"name not valid in the database encoding ({self.encoding}): {exc.reason}",
            )
            return name, end + 1

    def _relation(self, payload: bytes) -> None:
        (oid,) = _RELATION_HEAD.unpack_from(payload, 1)
        schema, pos = self._string(payload, 5)
        name, pos = self._string(payload, pos)
        pos += 1  # replica identity setting
        (count,) = _INT16.unpack_from(payload, pos)
        pos += 2
        columns: list[tuple[str, Converter | None]] = []
        keys: list[str] = []
        for _ in range(count):
            flags = payload[pos]
            column, pos = self._string(payload, pos + 1)
            type_oid, _typmod = _COLUMN_TAIL.unpack_from(payload, pos)
            pos += 8
            columns.append((column, converter_for_type(type_oid, self.domains)))
            if flags & 1:
                keys.append(column)
        self._relations[oid] = _Relation(oid, schema or "pg_catalog", name, columns, keys, self.encoding)

    def _relation_for(self, payload: bytes) -> _Relation:
        (oid,) = _RELATION_HEAD.unpack_from(payload, 1)
        try:
            return self._relations[oid]
        except KeyError:
            raise ReplicationError(
                f"pgoutput change for relation {oid} before its Relation message"
            ) from None

    # ---- rows --------------------------------------------------------------

    def _tuple(
        self, payload: bytes, pos: int, relation: _Relation, old: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], int]:
        try:
            return relation.parse(payload, pos, old)
        except Exception:
            # A value the fast path cannot convert: redo the row column by column.
            return relation.parse_carefully(payload, pos, old)

    def _event(
        self,
        relation: _Relation,
        method: str,
        old_data: dict[str, Any] | None,
        new_data: dict[str, Any] | None,
        out: list[Event],
    ) -> None:
        if not self._in_transaction:
            raise ReplicationError("pgoutput change outside a transaction (no Begin message)")
        # (commit LSN, position in the transaction) names the change: a replayed
        # change compares equal to (and hashes like) the original delivery.
        position = self._position
        self._position = position + 1
        txn = self._txn
        event = _new(RowChange, (self.channel, None, 0, self.source, txn[0], position))
        event.__dict__["data"] = {
            "table_schema": relation.schema,
            "table_name": relation.name,
            "session_user": None,
            "method": method,
            "old_data": old_data,
            "new_data": new_data,
            "query": None,
            "lsn": lsn_text(txn),
            "txid": txn[1],
            "commit_time": commit_time(txn),
        }
        self._last = event
        self.changes += 1
        out.append(event)

    def _insert(self, payload: bytes, out: list[Event]) -> None:
        oid, marker, count = _INSERT_HEAD.unpack_from(payload, 1)
        relation = self._relations.get(oid)
        if relation is None:
            relation = self._relation_for(payload)  # raises
        # The marker is 'N'. The row is parsed on first access to the event's data
        # (see _insert_data): most of a change's cost, and a consumer that filters
        # or forwards changes may never read it. The column count is checked now,
        # so a row that does not match its Relation message still stops the stream.
        if marker != 78 or count != relation.count:
            relation.parse(payload, 6, None)  # raises the protocol error
        if not self._in_transaction:
            raise ReplicationError("pgoutput change outside a transaction (no Begin message)")
        position = self._position
        self._position = position + 1
        txn = self._txn
        event = _new(RowChange, (self.channel, None, 0, self.source, txn[0], position))
        build: _Build = (_insert_data, _insert_row, relation, payload, txn)
        event.__dict__["_build"] = build
        self._last = event
        self.changes += 1
        out.append(event)

    def _key_only(self, relation: _Relation, row: dict[str, Any]) -> dict[str, Any]:
        return {name: row[name] for name in relation.key_names if name in row}

    def _update(self, payload: bytes, out: list[Event]) -> None:
        relation = self._relation_for(payload)
        pos = 5
        marker = payload[pos]
        old: dict[str, Any] | None = None
        if marker in (75, 79):  # 'K' key columns, 'O' full old row
            old, pos = self._tuple(payload, pos + 1, relation)
            if marker == 75:
                old = self._key_only(relation, old)
            marker = payload[pos]
        if marker != 78:  # 'N'
            raise ReplicationError(f"malformed pgoutput Update message (marker {chr(marker)!r})")
        new, _ = self._tuple(payload, pos + 1, relation, old)
        if old is None:
            # The key did not change: the old key is the new key.
            old = self._key_only(relation, new)
        self._event(relation, "UPDATE", old, new, out)

    def _delete(self, payload: bytes, out: list[Event]) -> None:
        relation = self._relation_for(payload)
        marker = payload[5]
        old, _ = self._tuple(payload, 6, relation)
        if marker == 75:  # 'K'
            old = self._key_only(relation, old)
        self._event(relation, "DELETE", old, None, out)

    def _truncate(self, payload: bytes, out: list[Event]) -> None:
        (count,) = _UINT32.unpack_from(payload, 1)
        pos = 6  # after the options byte
        for _ in range(count):
            (oid,) = _UINT32.unpack_from(payload, pos)
            pos += 4
            relation = self._relations.get(oid)
            if relation is None:
                raise ReplicationError(f"pgoutput Truncate of relation {oid} before its Relation message")
            self._event(relation, "TRUNCATE", None, None, out)


#: The transaction being decoded: [commit LSN, xid, commit timestamp (microseconds since
#: 2000), the LSN's text, the commit time] -- the last two None until :func:`lsn_text` and
#: :func:`commit_time` make them (shared by the transaction's events; a list: this is made
#: per transaction, and a class's ``__init__`` costs more than the work it saves).
_Transaction = list[Any]

#: An undecoded INSERT event's ``_build``: (_insert_data, _insert_row, relation, message,
#: transaction). ``_events`` calls the first two (it cannot import this module).
_Build = tuple[Any, Any, _Relation, bytes, _Transaction]


def lsn_text(txn: _Transaction) -> str:
    """The transaction's commit LSN as text (made once)."""
    text: str | None = txn[3]
    if text is None:
        text = txn[3] = format_lsn(txn[0])
    return text


def commit_time(txn: _Transaction) -> datetime:
    """The transaction's commit time (made once)."""
    time: datetime | None = txn[4]
    if time is None:
        # Exact to the microsecond until 2106 (float spacing < 0.5 us), and a few times
        # cheaper than epoch + timedelta.
        time = txn[4] = _fromtimestamp(txn[2] / 1e6 + _PG_EPOCH_UNIX, UTC)
    return time


def _insert_row(build: _Build) -> dict[str, Any]:
    """An undecoded INSERT event's ``new_data``: the row alone, parsed from the message.

    What a consumer that reads only the row pays (``data`` is built if asked
    for, reusing this row). Never raises: a value that cannot be converted
    becomes :class:`ServerText` (the careful parser); a row malformed past the
    column count checked on arrival (a real server never sends one) is logged
    and reads as ``{}``, and ``data["error"]`` says why.
    """
    relation, payload = build[2], build[3]
    try:
        row: dict[str, Any] = relation.parse(payload, 6, None)[0]
        return row
    except Exception:
        pass
    try:
        # A value the fast path cannot convert: redo the row column by column.
        row = relation.parse_carefully(payload, 6, None)[0]
        return row
    except Exception as exc:
        logger.error("change at %s: %s", lsn_text(build[4]), _malformed(relation, exc))
        return {}


def _malformed(relation: _Relation, exc: Exception) -> str:
    return f"malformed pgoutput row of {relation.schema}.{relation.name}: {type(exc).__name__}: {exc}"


def _insert_data(build: _Build, row: dict[str, Any] | None) -> dict[str, Any]:
    """An undecoded INSERT event's ``data``, built on first access (``row``: its new_data if read).

    Never raises (see :func:`_insert_row`).
    """
    _, _, relation, payload, txn = build
    lsn = lsn_text(txn)
    data: dict[str, Any] = {
        "table_schema": relation.schema,
        "table_name": relation.name,
        "session_user": None,
        "method": "INSERT",
        "old_data": None,
        "new_data": row,
        "query": None,
        "lsn": lsn,
        "txid": txn[1],
        "commit_time": commit_time(txn),
    }
    if row:
        return data
    try:
        data["new_data"] = relation.parse(payload, 6, None)[0]
    except Exception:
        try:
            data["new_data"] = relation.parse_carefully(payload, 6, None)[0]
        except Exception as exc:
            reason = _malformed(relation, exc)
            if row is None:  # else logged when new_data was read
                logger.error("change at %s: %s", lsn, reason)
            data["new_data"] = {}
            data["error"] = reason
    return data


def ack_position(event: Event) -> int | None:
    """The WAL position confirming ``event`` (None for events not from a change stream).

    The end of its transaction's commit record if the decoder saw that this
    is the transaction's last change, else the commit LSN (which makes a
    restarted stream replay the transaction).
    """
    event_dict = getattr(event, "__dict__", None)
    if event_dict is None:
        return None
    position = event_dict.get("_ack")
    if isinstance(position, int):
        return position
    build = event_dict.get("_build")
    if build is not None and "data" not in event_dict:
        # Not decoded yet: its commit LSN is in the build (do not parse the row for it).
        commit_lsn: int = build[4][0]
        return commit_lsn
    data = event_dict.get("data")
    lsn = data.get("lsn") if isinstance(data, dict) else None
    if not isinstance(lsn, str) or event[0] is None:
        return None
    try:
        return parse_lsn(lsn)
    except ValueError:
        return None

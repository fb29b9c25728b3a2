"""Column values of pgoutput rows: text to Python by type, and the row parsers.

Column values arrive as text and are converted by the column's type OID, as
every path converts them (:mod:`trio_pgevents._values` has the table).

Dates and timestamps Python cannot represent (``infinity``, BC, year > 9999)
stay text. NULL is ``None``. A value that cannot be converted at all -- a
``jsonb`` nested deeper than Python's parser goes, bytes that are not valid in
the database's encoding (a ``SQL_ASCII`` database holds any bytes) -- arrives
as a :class:`~trio_pgevents.ServerText` (a ``str`` with a ``reason``;
undecodable bytes as ``\\xNN`` escapes) instead of stopping the stream: the
slot would replay the same change after every restart. Names in Relation
messages (schema, table, column) that do not decode are treated the same way.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from .._errors import ReplicationError
from .._events import ServerText
from .._values import parse_array, text_converter

__all__ = [
    "DOMAIN_TYPES_SQL",
    "Converter",
    "DomainTypes",
    "RowParser",
    "careful_row_parser",
    "compile_row_parser",
    "converter_for_type",
    "read_domain_types",
]

#: Text form of a value -> the Python value.
Converter = Callable[[str], Any]

_INT16 = struct.Struct(">h")
_INT32 = struct.Struct(">i")


#: Each domain's base type, and each array-of-domain's element base type (the database's own
#: types, which pgoutput names by their OIDs): OID -> (base OID, is an array).
DomainTypes = dict[int, tuple[int, bool]]

#: Runs on the replication connection before streaming (no parameters): the domains and the
#: arrays of domains of the database, each with its base type (domains of domains followed).
DOMAIN_TYPES_SQL = (
    "WITH RECURSIVE chain(oid, base) AS ("
    "SELECT t.oid, t.typbasetype FROM pg_catalog.pg_type t WHERE t.typtype OPERATOR(pg_catalog.=) 'd' "
    "UNION ALL SELECT c.oid, t.typbasetype FROM chain c JOIN pg_catalog.pg_type t "
    "ON t.oid OPERATOR(pg_catalog.=) c.base WHERE t.typtype OPERATOR(pg_catalog.=) 'd'), "
    "resolved AS (SELECT c.oid, c.base FROM chain c JOIN pg_catalog.pg_type b "
    "ON b.oid OPERATOR(pg_catalog.=) c.base WHERE b.typtype OPERATOR(pg_catalog.<>) 'd') "
    "SELECT r.oid::pg_catalog.int8, r.base::pg_catalog.int8, false FROM resolved r "
    "UNION ALL SELECT a.oid::pg_catalog.int8, r.base::pg_catalog.int8, true "
    "FROM pg_catalog.pg_type a JOIN resolved r ON a.typelem OPERATOR(pg_catalog.=) r.oid "
    "WHERE a.typcategory OPERATOR(pg_catalog.=) 'A'"
)


def read_domain_types(cursor: Any) -> DomainTypes:
    """The database's domains (and arrays of them) with their base types (blocking; on ``cursor``)."""
    cursor.execute(DOMAIN_TYPES_SQL)
    return {int(oid): (int(base), bool(is_array)) for oid, base, is_array in cursor.fetchall()}


def converter_for_type(type_oid: int, domains: DomainTypes | None = None) -> Converter | None:
    """The converter used for a column of this type OID (``None``: kept as text).

    A domain converts as its base type (``domains`` knows the database's).
    """
    alias = domains.get(type_oid) if domains else None
    if alias is None:
        return text_converter(type_oid)
    base, is_array = alias
    element = text_converter(base)
    if not is_array:
        return element

    def array(text: str) -> Any:
        return parse_array(text, element)

    return array


#: Converters that accept the raw bytes of the text form (no decode needed).
_BYTES_OK: frozenset[Converter] = frozenset({int, float})

RowParser = Callable[[bytes, int, "dict[str, Any] | None"], "tuple[dict[str, Any], int]"]


def _other_kind(payload: bytes, pos: int, row: dict[str, Any], name: str, old: dict[str, Any] | None) -> int:
    """A TupleData column that is not a text value: NULL, unchanged TOAST, binary."""
    kind = payload[pos]
    if kind == 110:  # 'n': NULL
        row[name] = None
        return pos + 1
    if kind == 117:  # 'u': unchanged TOASTed value, not sent: known only from the old row
        if old is not None and name in old:
            row[name] = old[name]
        return pos + 1
    if kind == 98:  # 'b': binary (only if asked for; we never ask)
        start = pos + 5
        length: int = _INT32.unpack_from(payload, pos + 1)[0]
        row[name] = bytes(payload[start : start + length])
        return start + length
    raise ReplicationError(f"unexpected pgoutput tuple column kind {chr(kind)!r}")


def compile_row_parser(
    schema: str, table: str, columns: list[tuple[str, Converter | None]], encoding: str
) -> RowParser:
    """A TupleData parser specialised for one relation's columns.

    The per-row work is the hot path of a change stream; unrolling the column
    loop (no per-column tuple unpacking, branch on the converter at compile
    time, ints and floats parsed from bytes without decoding) makes it about a
    third cheaper. Column names and converters are passed in the namespace,
    never formatted into the source.
    """
    namespace: dict[str, Any] = {
        "unpack": _INT32.unpack_from,
        "unpack16": _INT16.unpack_from,
        "other": _other_kind,
        "enc": encoding,
        "count": len(columns),
        "Error": ReplicationError,
        "mismatch": f"pgoutput row of {schema}.{table} does not match its Relation message",
    }
    lines = [
        "def parse(payload, pos, old):",
        "    if unpack16(payload, pos)[0] != count:",
        "        raise Error(mismatch)",
        "    pos += 2",
        "    row = {}",
    ]
    for index, (name, convert) in enumerate(columns):
        namespace[f"n{index}"] = name
        namespace[f"c{index}"] = convert
        if convert is None:
            value = "payload[start:pos].decode(enc)"
        elif convert in _BYTES_OK:
            value = f"c{index}(payload[start:pos])"
        else:
            value = f"c{index}(payload[start:pos].decode(enc))"
        lines += [
            "    if payload[pos] == 116:",
            "        start = pos + 5",
            "        pos = start + unpack(payload, pos + 1)[0]",
            f"        row[n{index}] = {value}",
            "    else:",
            f"        pos = other(payload, pos, row, n{index}, old)",
        ]
    lines.append("    return row, pos")
    exec(compile("\n".join(lines), f"<pgoutput row parser for {schema}.{table}>", "exec"), namespace)
    parser: RowParser = namespace["parse"]
    return parser


def _careful_value(raw: bytes, convert: Converter | None, encoding: str, name: str) -> Any:
    """One column value, never raising: what cannot be converted stays server text."""
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        return ServerText(
            raw.decode(encoding, "backslashreplace"),
            f"column {name!r}: bytes not valid in the database encoding ({encoding}): {exc.reason} "
            f"at byte {exc.start}",
        )
    if convert is None:
        return text
    try:
        return convert(text)
    except Exception as exc:  # RecursionError (deep json), ValueError, ...
        return ServerText(
            text,
            f"column {name!r}: could not convert with {getattr(convert, '__name__', convert)!s}: "
            f"{type(exc).__name__}: {exc}",
        )


def careful_row_parser(
    schema: str, table: str, columns: list[tuple[str, Converter | None]], encoding: str
) -> RowParser:
    """The slow, per-column TupleData parser used when the compiled one raised.

    Same wire handling, but each value goes through :func:`_careful_value`, so
    one bad value costs only itself. Protocol errors (a row that does not
    match its Relation message) still raise.
    """
    count = len(columns)
    mismatch = f"pgoutput row of {schema}.{table} does not match its Relation message"
    unpack = _INT32.unpack_from

    def parse(payload: bytes, pos: int, old: dict[str, Any] | None) -> tuple[dict[str, Any], int]:
        if _INT16.unpack_from(payload, pos)[0] != count:
            raise ReplicationError(mismatch)
        pos += 2
        row: dict[str, Any] = {}
        for name, convert in columns:
            if payload[pos] == 116:  # 't': text value
                start = pos + 5
                pos = start + unpack(payload, pos + 1)[0]
                row[name] = _careful_value(payload[start:pos], convert, encoding, name)
            else:
                pos = _other_kind(payload, pos, row, name, old)
        return row, pos

    return parse

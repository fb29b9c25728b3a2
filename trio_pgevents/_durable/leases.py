"""Who may read a durable consumer's events: partition leases kept in the database.

A consumer name has ``partitions`` partitions (1 for an exclusive consumer,
N for a group), each a row of ``<schema>.consumer_parts`` with its stored
position and its lease: ``holder`` (a member id) until ``expires_at``, in the
server's clock. Every stream opened under the name is a *member*
(``<schema>.consumer_members``, alive while it renews). Every ``tick`` a
member, in one short transaction:

- renews its member row and the leases it holds (a lease it could not renew
  expired and may have been taken: *lost*);
- counts the live members and takes its fair share, ``ceil(partitions /
  members)``: free or expired partitions up to that share (*gained*, with
  their stored positions), or says which it holds beyond it (*surplus*, to be
  handed back once their events are processed).

So an exclusive consumer (one partition) has one active member and the rest
stand by; a member that closes releases its leases (the others take them at
once, woken by a NOTIFY), one that dies loses them after ``lease_timeout``.
Storing a position is fenced: it updates the partition's row only while this
member holds an unexpired lease on it, and that row lock orders it against a
take-over (see :meth:`LeaseSql.store`).
"""

from __future__ import annotations

import math
import os
import socket
import uuid
from dataclasses import dataclass, field
from typing import Any

from psycopg2 import sql

from .._errors import ConfigurationError
from .outbox import Position
from .prepared import Prepared

__all__ = ["LeaseSql", "LeaseTick", "Membership", "member_id"]


def member_id() -> str:
    """A new member's id: host, process and a random part (unique; readable in ``status``)."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


class LeaseSql:
    """The lease statements of one library schema (quoted once, reused)."""

    def __init__(self, schema: str) -> None:
        def table(name: str) -> sql.Composable:
            return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name))

        consumers, parts, members = table("consumers"), table("consumer_parts"), table("consumer_members")
        lease = "(pg_catalog.now() @+ pg_catalog.make_interval(secs => %s))"
        name_is = "@= %s::pg_catalog.text"
        #: Params: name, first txid (text), first id, partitions, grouped. A new consumer.
        self.register = _sql(
            "INSERT INTO {} (name, last_txid, last_id, partitions, grouped) "
            "VALUES (%s, %s::pg_catalog.xid8, %s, %s, %s) ON CONFLICT (name) DO NOTHING",
            consumers,
        )
        #: Params: name. The consumer's mode, as stored.
        self.mode = _sql(f"SELECT partitions, grouped FROM {{}} WHERE name {name_is}", consumers)
        #: Params: name. One row per partition, starting at the consumer's position (a
        #: consumer of 0.1.0 had only that position).
        self.seed = _sql(
            "INSERT INTO {} (consumer, part, last_txid, last_id) "
            "SELECT c.name, g.part, c.last_txid, c.last_id FROM {} c, "
            "pg_catalog.generate_series(0, c.partitions @- 1) AS g(part) "
            f"WHERE c.name {name_is} ON CONFLICT (consumer, part) DO NOTHING",
            parts,
            consumers,
        )
        #: Params: name, member, lease seconds. Joins, or says it is still alive.
        self.heartbeat = _sql(
            f"INSERT INTO {{}} (consumer, member, expires_at) VALUES (%s, %s, {lease}) "
            "ON CONFLICT (consumer, member) DO UPDATE SET expires_at = EXCLUDED.expires_at",
            members,
        )
        #: Params: name, name. Live members (at least this one), after forgetting long-dead ones.
        self.live_members = _sql(
            f"WITH gone AS (DELETE FROM {{0}} WHERE consumer {name_is} "
            "AND expires_at @< (pg_catalog.now() @- pg_catalog.make_interval(mins => 10))) "
            f"SELECT pg_catalog.count(*) FROM {{0}} WHERE consumer {name_is} "
            "AND expires_at @> pg_catalog.now()",
            members,
        )
        #: Params: lease seconds, name, member. The leases still held, renewed, with the
        #: positions stored (``ack_in_transaction`` stores them in the caller's transactions).
        self.renew = _sql(
            f"UPDATE {{}} SET expires_at = {lease} WHERE consumer {name_is} "
            "AND holder @= %s::pg_catalog.text AND expires_at @> pg_catalog.now() "
            "RETURNING part, last_txid::pg_catalog.text, last_id",
            parts,
        )
        #: Params: member, lease seconds, name, most. Free or expired partitions, taken.
        self.acquire = _sql(
            f"UPDATE {{0}} p SET holder = %s, expires_at = {lease} FROM ("
            f"SELECT f.consumer, f.part FROM {{0}} f WHERE f.consumer {name_is} "
            "AND (f.holder IS NULL OR f.expires_at IS NULL OR f.expires_at @<= pg_catalog.now()) "
            "ORDER BY f.part LIMIT %s FOR UPDATE SKIP LOCKED) AS free "
            "WHERE p.consumer @= free.consumer AND p.part @= free.part "
            "RETURNING p.part, p.last_txid::pg_catalog.text, p.last_id",
            parts,
        )
        #: Params: name, member, parts (int[]). Hands leases back.
        self.release = _sql(
            f"UPDATE {{}} SET holder = NULL, expires_at = NULL WHERE consumer {name_is} "
            "AND holder @= %s::pg_catalog.text AND part @= ANY (%s::pg_catalog.int4[])",
            parts,
        )
        #: Params: name, member. Leaves the member list.
        self.leave = _sql(
            f"DELETE FROM {{}} WHERE consumer {name_is} AND member @= %s::pg_catalog.text", members
        )
        #: Params: txid (text), id, name, part, member, txid (text), id. The position of one
        #: partition, only while this member holds its lease, never backwards. The UPDATE
        #: locks the row: a take-over (``acquire``) waits for the caller's commit and then
        #: reads the position stored, so no event is taken by two members.
        store = (
            "UPDATE {} SET last_txid = %s::pg_catalog.xid8, last_id = %s, updated_at = pg_catalog.now() "
            f"WHERE consumer {name_is} AND part @= %s AND holder @= %s::pg_catalog.text "
            "AND expires_at @> pg_catalog.now() "
            "AND (last_txid, last_id) @< (%s::pg_catalog.xid8, %s::pg_catalog.int8)"
        )
        self.store = _sql(store, parts)
        #: Params: those of ``store``, then name. ``store`` and ``summarise`` in one round
        #: trip, for a consumer of one partition (its position is that partition's): one row,
        #: the number of partition rows stored (0 or 1, as ``store``'s row count).
        self.store_sole = _sql(
            f"WITH s AS ({store} RETURNING last_txid, last_id), "
            "c AS (UPDATE {} c SET last_txid = s.last_txid, last_id = s.last_id, "
            f"updated_at = pg_catalog.now() FROM s WHERE c.name {name_is} "
            "AND (c.last_txid, c.last_id) @< (s.last_txid, s.last_id) RETURNING 1) "
            "SELECT pg_catalog.count(*) FROM s",
            parts,
            consumers,
        )
        #: ``store`` and ``store_sole``, prepared on the connections they run on (a store
        #: follows every ``ack_every`` events, on the reader's connection).
        self.prepared_store = Prepared(self.store)
        self.prepared_store_sole = Prepared(self.store_sole)
        #: Params: member, name, part. True while this member holds the partition's lease
        #: (locks the row, as ``store`` does).
        self.holds = _sql(
            "SELECT holder @= %s::pg_catalog.text AND expires_at @> pg_catalog.now() FROM {} "
            f"WHERE consumer {name_is} AND part @= %s FOR UPDATE",
            parts,
        )
        #: Params: name, name. The consumer's position: the slowest partition's (what
        #: retention deletes up to), never backwards.
        self.summarise = _sql(
            "UPDATE {} c SET last_txid = m.last_txid, last_id = m.last_id, updated_at = pg_catalog.now() "
            f"FROM (SELECT p.last_txid, p.last_id FROM {{}} p WHERE p.consumer {name_is} "
            f"ORDER BY p.last_txid, p.last_id LIMIT 1) AS m WHERE c.name {name_is} "
            "AND (c.last_txid, c.last_id) @< (m.last_txid, m.last_id)",
            consumers,
            parts,
        )


#: Operators written short in the statements above, each qualified: nothing on a
#: role's search_path can stand in for them. (Qualified operators all bind alike,
#: left to right: the statements parenthesise arithmetic.)
_OPERATORS = {"@<=": "<=", "@=": "=", "@<": "<", "@>": ">", "@+": "+", "@-": "-"}


def _sql(text: str, *tables: sql.Composable) -> sql.Composed:
    for short, operator in _OPERATORS.items():
        text = text.replace(short, f"OPERATOR(pg_catalog.{operator})")
    return sql.SQL(text).format(*tables)


@dataclass
class LeaseTick:
    """What one tick changed for this member."""

    #: Partitions taken, with their stored positions.
    gained: dict[int, Position] = field(default_factory=dict)
    #: Partitions held until now whose lease could not be renewed (another may hold them).
    lost: set[int] = field(default_factory=set)
    #: Partitions held beyond the fair share: hand them back once their events are processed.
    surplus: set[int] = field(default_factory=set)
    #: The stored positions of the partitions renewed.
    stored: dict[int, Position] = field(default_factory=dict)


class Membership:
    """One member's view of a consumer's leases; its methods run on a cursor (blocking).

    Args:
        statements: the schema's lease SQL.
        consumer: the consumer's name.
        member: this member's id.
        lease_timeout: seconds a lease lasts without renewal.
    """

    def __init__(self, statements: LeaseSql, consumer: str, member: str, lease_timeout: float) -> None:
        self._sql = statements
        #: The schema's lease SQL.
        self.statements = statements
        self.consumer = consumer
        self.member = member
        self.lease_timeout = lease_timeout
        #: The partitions of the consumer (known after :meth:`join`).
        self.partitions = 1
        #: The partitions this member holds now.
        self.held: set[int] = set()

    def join(self, cursor: Any, partitions: int, grouped: bool, start: Position) -> None:
        """Register the consumer if new (``partitions``, ``grouped``, from ``start``), or check it."""
        cursor.execute(self._sql.register, (self.consumer, str(start[0]), start[1], partitions, grouped))
        cursor.execute(self._sql.mode, (self.consumer,))
        stored_partitions, stored_grouped = cursor.fetchone()
        if bool(stored_grouped) != grouped:
            kind = "a consumer group" if stored_grouped else "an exclusive consumer"
            raise ConfigurationError(
                f"durable consumer {self.consumer!r} is {kind}: open it with group={bool(stored_grouped)}"
            )
        if grouped and int(stored_partitions) != partitions:
            raise ConfigurationError(
                f"durable consumer group {self.consumer!r} has {stored_partitions} partitions (fixed when "
                f"the group was created), not {partitions}: open it with partitions={stored_partitions}, "
                "or use a new consumer name"
            )
        self.partitions = int(stored_partitions)
        cursor.execute(self._sql.seed, (self.consumer,))

    def tick(self, cursor: Any) -> LeaseTick:
        """Renew, then take or give up partitions towards the fair share (one transaction)."""
        statements, name, lease = self._sql, self.consumer, self.lease_timeout
        cursor.execute(statements.heartbeat, (name, self.member, lease))
        cursor.execute(statements.renew, (lease, name, self.member))
        stored = {int(part): (int(txid), int(last_id)) for part, txid, last_id in cursor.fetchall()}
        renewed = set(stored)
        result = LeaseTick(lost=self.held - renewed, stored=stored)
        cursor.execute(statements.live_members, (name, name))
        members = max(1, int(cursor.fetchone()[0]))
        fair = math.ceil(self.partitions / members)
        if len(renewed) > fair:
            result.surplus = set(sorted(renewed)[fair:])
        elif len(renewed) < fair:
            cursor.execute(statements.acquire, (self.member, lease, name, fair - len(renewed)))
            for part, txid, last_id in cursor.fetchall():
                result.gained[int(part)] = (int(txid), int(last_id))
        self.held = renewed | set(result.gained)
        return result

    def release(self, cursor: Any, parts: set[int]) -> None:
        """Hand ``parts`` back (their positions stored first by the caller)."""
        if parts:
            cursor.execute(self._sql.release, (self.consumer, self.member, sorted(parts)))
        self.held -= parts

    def leave(self, cursor: Any) -> None:
        """Release every lease and leave the member list (closing)."""
        self.release(cursor, set(self.held))
        cursor.execute(self._sql.leave, (self.consumer, self.member))

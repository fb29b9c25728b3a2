"""What installer operations return: reports of actions, and the status of what is installed.

Plain frozen dataclasses, no database access: :class:`InstallAction` and
:class:`InstallReport` (what an operation did), :class:`TableStatus` and
:class:`InstallStatus` (what ``status()`` found), :class:`ConsumerInfo` (a
durable consumer's position, members and lag) and :class:`ConsumerMember`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from .._cdc import ChangeStreamStatus
from .sql import DdlEvents

__all__ = [
    "ActionKind",
    "ConsumerInfo",
    "ConsumerMember",
    "ConsumerMode",
    "InstallAction",
    "InstallReport",
    "InstallStatus",
    "ObjectState",
    "TableState",
    "TableStatus",
]

ActionKind = Literal["installed", "replaced", "unchanged", "removed", "skipped"]
ObjectState = Literal["INSTALLED", "OUTDATED", "MISSING"]
TableState = Literal["INSTALLED", "OUTDATED", "MISSING", "ORPHANED", "SKIPPED"]
ConsumerMode = Literal["exclusive", "group"]


@dataclass(frozen=True)
class InstallAction:
    """One thing an operation did (or would do, or found already done).

    Attributes:
        kind: what kind of object: ``schema``, ``table``, ``function``,
            ``trigger``, ``event_trigger``, ``watch`` (a registry entry).
        name: which object (schema-qualified, quoted where it helps).
        action: ``installed``, ``replaced`` (was OUTDATED), ``unchanged``,
            ``removed`` or ``skipped``.
        reason: why it was skipped (or other detail), else ``None``.
    """

    kind: str
    name: str
    action: ActionKind
    reason: str | None = None


@dataclass(frozen=True)
class InstallReport:
    """What an installer operation did, object by object."""

    actions: tuple[InstallAction, ...] = ()

    def _with(self, action: str) -> tuple[InstallAction, ...]:
        return tuple(a for a in self.actions if a.action == action)

    @property
    def installed(self) -> tuple[InstallAction, ...]:
        """Objects created."""
        return self._with("installed")

    @property
    def replaced(self) -> tuple[InstallAction, ...]:
        """OUTDATED objects re-created with the current definition."""
        return self._with("replaced")

    @property
    def unchanged(self) -> tuple[InstallAction, ...]:
        """Objects that were already up to date."""
        return self._with("unchanged")

    @property
    def removed(self) -> tuple[InstallAction, ...]:
        """Objects dropped."""
        return self._with("removed")

    @property
    def skipped(self) -> tuple[InstallAction, ...]:
        """Objects left alone, each with a reason (views, foreign tables...)."""
        return self._with("skipped")

    @property
    def changed(self) -> bool:
        """True if anything was installed, replaced or removed."""
        return any(a.action in ("installed", "replaced", "removed") for a in self.actions)

    def __str__(self) -> str:
        lines = [
            f"{a.action:>9}  {a.kind:<13} {a.name}" + (f"  ({a.reason})" if a.reason else "")
            for a in self.actions
        ]
        return "\n".join(lines) if lines else "(nothing to do)"


@dataclass(frozen=True)
class TableStatus:
    """The state of one table's triggers.

    Attributes:
        schema: the table's schema.
        table: the table's name.
        state: ``INSTALLED`` (up to date), ``OUTDATED`` (made by another
            version or mode: the next ``watch_*``/``install`` replaces it),
            ``MISSING`` (watched, no trigger), ``ORPHANED`` (trigger on a table
            no longer watched, or a watched table that was dropped:
            ``prune()`` removes it), ``SKIPPED`` (views, foreign tables...).
        reason: detail for any state but INSTALLED.
        durable: True when the table is watched in durable (outbox) mode.
    """

    schema: str
    table: str
    state: TableState
    reason: str | None = None
    durable: bool = False


@dataclass(frozen=True)
class InstallStatus:
    """What is installed, compared with what this version would install.

    Attributes:
        function_state: the library schema's base functions and registry.
        ddl_state: the DDL event triggers, or ``None`` when never installed.
        tables: per watched (or orphaned) table.
        auto_rebuild_state: the auto-rebuild event trigger, or ``None``.
        durable_state: the outbox tables and function, or ``None``.
        change_streams: every change stream slot of the database (see
            :meth:`Installer.change_streams`). They do not count in
            :attr:`ok`; :attr:`lagging_change_streams` lists those that need
            attention.
        problems: privileges in the library schema that let a role do more
            than it should (EXECUTE or USAGE granted to PUBLIC beyond what
            auto-rebuild needs, a SECURITY DEFINER function owned by a
            superuser: what an install by an earlier version left).
            ``install()`` fixes them.
        ddl_events: which DDL events the installed DDL event triggers send
            (``"tables"`` or ``"all"``, see ``install(ddl_events=...)``), or
            ``None`` when there are none, or they are OUTDATED.
        all_schemas: every user schema is watched, those created later too
            (``watch_all_schemas()``).
        pg_events: objects of the original pg_events found in the database
            (its DDL event triggers, functions and table triggers), one line
            each; empty when there are none. They do not count in :attr:`ok`:
            ``install(replace_pg_events=True)`` (``trio-pgevents build
            --replace-pg-events``) removes them.
    """

    function_state: ObjectState
    ddl_state: ObjectState | None
    tables: tuple[TableStatus, ...]
    auto_rebuild_state: ObjectState | None = None
    durable_state: ObjectState | None = None
    change_streams: tuple[ChangeStreamStatus, ...] = ()
    problems: tuple[str, ...] = ()
    ddl_events: DdlEvents | None = None
    all_schemas: bool = False
    pg_events: tuple[str, ...] = ()

    @property
    def lagging_change_streams(self) -> tuple[ChangeStreamStatus, ...]:
        """Change stream slots with a warning: lag past the threshold, or lost."""
        return tuple(s for s in self.change_streams if s.warning is not None)

    @property
    def ok(self) -> bool:
        """False when anything is OUTDATED or MISSING, or there is a privilege problem."""
        states: list[str | None] = [
            self.function_state,
            self.ddl_state,
            self.auto_rebuild_state,
            self.durable_state,
        ]
        states.extend(t.state for t in self.tables)
        return not self.problems and not any(s in ("OUTDATED", "MISSING") for s in states)

    def table(self, table: str, schema: str = "public") -> TableStatus | None:
        """The status of one table, or None when it is not listed."""
        for t in self.tables:
            if t.schema == schema and t.table == table:
                return t
        return None


@dataclass(frozen=True)
class ConsumerMember:
    """A stream open under a durable consumer's name (a live member: its lease is renewed).

    Attributes:
        member: the member's id, ``host:pid:random`` (``DurableStatistics.member``).
        active: True when it holds at least one unexpired partition lease (it
            delivers events); False: it stands by.
        partitions: the partitions it holds, in order.
        expires_at: when its membership lapses unless renewed (the server's clock).
    """

    member: str
    active: bool
    partitions: tuple[int, ...]
    expires_at: datetime


@dataclass(frozen=True)
class ConsumerInfo:
    """A durable-mode consumer: its stored position, its members, and how far behind it is.

    Attributes:
        name: the consumer's name.
        last_txid: transaction id of the last acknowledged event (the slowest
            partition's: what retention deletes up to).
        last_id: id of the last acknowledged event.
        created_at: when the consumer was registered.
        updated_at: when its position was last stored.
        pending: events in the outbox after its position (the same as :attr:`lag_events`).
        mode: ``"exclusive"`` (one active member, the others stand by) or
            ``"group"`` (members share the partitions).
        partitions: how many partitions (1 for an exclusive consumer).
        members: the live members (streams open under the name), active ones first.
        lag_events: events in the outbox after its position.
        lag_seconds: age of the oldest event after its position, seconds (0.0
            when there is none).
        dead_letters: events of this consumer in ``<schema>.dead_letters``.
    """

    name: str
    last_txid: int
    last_id: int
    created_at: datetime
    updated_at: datetime
    pending: int = 0
    mode: ConsumerMode = "exclusive"
    partitions: int = 1
    members: tuple[ConsumerMember, ...] = ()
    lag_events: int = 0
    lag_seconds: float = 0.0
    dead_letters: int = 0

    @property
    def active_members(self) -> tuple[ConsumerMember, ...]:
        """The members holding a partition."""
        return tuple(m for m in self.members if m.active)

    @property
    def standby_members(self) -> tuple[ConsumerMember, ...]:
        """The members holding none (they take over when a lease frees)."""
        return tuple(m for m in self.members if not m.active)

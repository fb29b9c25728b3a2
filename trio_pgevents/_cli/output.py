"""What the commands print: text tables, events as JSON lines, installer reports, status (text or JSON)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any, TextIO

import msgspec

from .. import (
    ChangeStreamStatus,
    ConsumerInfo,
    Event,
    InstallAction,
    InstallStatus,
    Overflow,
    RowChange,
    SchemaChange,
    StreamGap,
)
from .defaults import PROG

__all__ = [
    "event_line",
    "event_to_json",
    "format_table",
    "human_bytes",
    "lagging_consumers",
    "print_actions",
    "print_consumers",
    "print_event",
    "print_status",
    "status_to_json",
    "warn_lagging_consumers",
    "warn_lagging_slots",
]


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart, headers first; no trailing blanks."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)


def human_bytes(amount: int) -> str:
    """``1610612736`` -> ``1.5 GiB``."""
    size = float(amount)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024:
            return f"{amount} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


# ---- events --------------------------------------------------------------------------------------


def event_to_json(event: Event) -> dict[str, Any]:
    """One event as a JSON-ready dict (what ``listen`` prints, one per line)."""
    out: dict[str, Any] = {
        "type": type(event).__name__,
        "channel": event.channel,
        "payload": event.payload,
        "pid": event.pid,
        "source": event.source,
    }
    if isinstance(event, (RowChange, SchemaChange)):
        out["data"] = event.data  # never raises: {} for a hand-built event whose payload is not JSON
    elif isinstance(event, StreamGap):
        out.update(
            disconnected_at=event.disconnected_at.isoformat(),
            reconnected_at=event.reconnected_at.isoformat(),
            reason=event.reason,
            replayed=event.replayed,
        )
    elif isinstance(event, Overflow):
        out["dropped"] = event.dropped
    return out


_ENCODER = msgspec.json.Encoder(decimal_format="number", enc_hook=str)


def event_line(event: Event, *, ascii_only: bool = False) -> str:
    """One event as one line of JSON, newline included. Never raises.

    Should the event's data not serialise (nesting past what ``json.dumps``
    recurses into), the line is printed without ``data``: the payload is in it.
    """
    fields = event_to_json(event)
    try:
        if ascii_only:
            text = json.dumps(fields, ensure_ascii=True, default=str)
        else:  # exact numbers (Decimal) as JSON numbers, every digit
            text = _ENCODER.encode(fields).decode("utf-8")
    except Exception:  # RecursionError, ...: whatever a payload's data can cause
        fields.pop("data", None)
        text = json.dumps(fields, ensure_ascii=ascii_only, default=str)
    return text + "\n"


def print_event(out: TextIO, event: Event) -> None:
    """Write the event's JSON line; ``\\u`` escapes where ``out`` cannot encode the text."""
    try:
        out.write(event_line(event))
    except UnicodeEncodeError:
        # Text the output cannot encode (a lone surrogate; a terminal that is not UTF-8):
        # the same JSON with \u escapes. The encoding failed before anything was written.
        out.write(event_line(event, ascii_only=True))


# ---- installer reports -------------------------------------------------------------------------


def print_actions(actions: Sequence[InstallAction], out: TextIO) -> None:
    """The installer's actions as a table, then a count of each kind of action."""
    rows = [(a.action, a.kind, a.name, a.reason or "") for a in actions]
    out.write(format_table(("ACTION", "KIND", "NAME", "REASON"), rows) + "\n")
    counts = {name: sum(1 for a in actions if a.action == name) for name in _ACTIONS}
    out.write(", ".join(f"{n} {name}" for name, n in counts.items() if n or name != "removed") + "\n")


_ACTIONS = ("installed", "replaced", "unchanged", "removed", "skipped")


def status_to_json(
    status: InstallStatus,
    consumers: Sequence[ConsumerInfo] = (),
    lagging: Sequence[ConsumerInfo] = (),
) -> dict[str, Any]:
    """The installer's status as a JSON-ready dict (``status --json``).

    ``change_streams`` lists every change stream slot (with ``lag_bytes`` and
    ``warning``); ``lagging_change_streams`` names those with a warning.
    ``consumers`` lists every durable consumer (each ``ConsumerInfo`` field,
    ``members`` with each member's fields); ``lagging_consumers`` names those
    past ``--max-consumer-lag``.
    """
    data = dataclasses.asdict(status)
    data["ok"] = status.ok
    data["lagging_change_streams"] = [s.slot for s in status.lagging_change_streams]
    data["consumers"] = [dataclasses.asdict(c) for c in consumers]
    data["lagging_consumers"] = [c.name for c in lagging]
    return data


def lagging_consumers(consumers: Sequence[ConsumerInfo], max_lag: float | None) -> list[ConsumerInfo]:
    """The consumers whose oldest unacknowledged event is older than ``max_lag`` seconds (None: none)."""
    if max_lag is None:
        return []
    return [c for c in consumers if c.lag_seconds > max_lag]


def print_consumers(consumers: Sequence[ConsumerInfo], lagging: Sequence[ConsumerInfo], out: TextIO) -> None:
    """``status``' durable consumers: one row each, then one row per live member."""
    if not consumers:
        return
    late = {c.name for c in lagging}
    rows = [
        (
            c.name,
            c.mode,
            str(c.partitions),
            f"{len(c.active_members)} active, {len(c.standby_members)} standby",
            f"{c.last_txid}/{c.last_id}",
            str(c.lag_events),
            f"{c.lag_seconds:.1f}",
            str(c.dead_letters),
            "LAGGING" if c.name in late else "",
        )
        for c in consumers
    ]
    headers = ("CONSUMER", "MODE", "PARTITIONS", "MEMBERS", "POSITION", "LAG EVENTS", "LAG SECONDS")
    out.write("durable consumers\n")
    out.write(format_table((*headers, "DEAD LETTERS", "WARNING"), rows) + "\n")
    members = [
        (
            c.name,
            m.member,
            "active" if m.active else "standby",
            _ranges(m.partitions),
            m.expires_at.isoformat(timespec="seconds"),
        )
        for c in consumers
        for m in c.members
    ]
    if members:
        out.write("durable consumer members\n")
        out.write(format_table(("CONSUMER", "MEMBER", "STATE", "PARTITIONS", "EXPIRES"), members) + "\n")


def _ranges(parts: Sequence[int]) -> str:
    """``(0, 1, 2, 5)`` -> ``0-2,5``; nothing held -> ``-``."""
    if not parts:
        return "-"
    spans: list[list[int]] = []
    for part in parts:
        if spans and part == spans[-1][1] + 1:
            spans[-1][1] = part
        else:
            spans.append([part, part])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def _change_stream_rows(streams: Sequence[ChangeStreamStatus]) -> list[tuple[str, ...]]:
    """Rows of ``status``' change stream table: slot, active, lag, WAL status, warning."""
    rows: list[tuple[str, ...]] = []
    for s in streams:
        lag = "unknown" if s.lag_bytes is None else f"{human_bytes(s.lag_bytes)} ({s.lag_bytes} bytes)"
        if s.warning is None:
            flag = ""
        elif s.wal_status == "lost":
            flag = "LOST"
        else:
            flag = "LAGGING"
        active = f"yes (pid {s.active_pid})" if s.active else "no"
        rows.append((s.slot, active, lag, s.wal_status or "", flag))
    return rows


def print_status(
    status: InstallStatus,
    out: TextIO,
    consumers: Sequence[ConsumerInfo] = (),
    lagging: Sequence[ConsumerInfo] = (),
) -> None:
    """``status`` as text: what is installed, tables, slots, durable consumers, a verdict.

    ``lagging`` are the consumers past ``--max-consumer-lag`` (flagged LAGGING).
    """
    for label, state in (
        ("functions", status.function_state),
        ("ddl triggers", status.ddl_state),
        ("auto-rebuild", status.auto_rebuild_state),
        ("durable", status.durable_state),
    ):
        shown: str = state or "not installed"
        if label == "ddl triggers" and status.ddl_events:
            shown += f" (ddl events: {status.ddl_events})"
        out.write(f"{label:<14}{shown}\n")
    if status.all_schemas:
        out.write(f"{'schemas':<14}every user schema, those created later too\n")
    rows = [
        (f"{t.schema}.{t.table}", t.state, "yes" if t.durable else "no", t.reason or "")
        for t in status.tables
    ]
    if rows:
        out.write(format_table(("TABLE", "STATE", "DURABLE", "REASON"), rows) + "\n")
    else:
        out.write("no watched tables\n")
    if status.change_streams:
        out.write("change streams\n")
        headers = ("SLOT", "ACTIVE", "LAG", "WAL STATUS", "WARNING")
        out.write(format_table(headers, _change_stream_rows(status.change_streams)) + "\n")
    print_consumers(consumers, lagging, out)
    for problem in status.problems:
        out.write(f"privileges: {problem}\n")
    for found in status.pg_events:
        out.write(f"pg_events: {found}\n")
    if status.pg_events:
        out.write(
            f"pg_events: the original pg_events' objects are installed too; {PROG} build "
            "--replace-pg-events removes them\n"
        )
    if status.ok:
        out.write("ok\n")
    elif status.problems:
        out.write(
            "NOT OK: privileges left by an earlier install, or something OUTDATED/MISSING (run build)\n"
        )
    else:
        out.write("NOT OK: something is OUTDATED or MISSING (run build)\n")


def warn_lagging_slots(status: InstallStatus, err: TextIO) -> None:
    """One loud line a change stream slot past the lag limit (or lost), with how to drop it."""
    for lagging in status.lagging_change_streams:
        hint = f"To drop it: {PROG} drop-change-stream --slot {lagging.slot}"
        err.write(f"{PROG}: WARNING: {lagging.warning} {hint}\n")


def warn_lagging_consumers(lagging: Sequence[ConsumerInfo], max_lag: float | None, err: TextIO) -> None:
    """One loud line per durable consumer past ``--max-consumer-lag``, saying whether a worker holds it."""
    for c in lagging:
        if c.active_members:
            who = f"{len(c.active_members)} active member(s): are they keeping up?"
        elif c.members:
            who = "no member holds a partition yet (they stand by)"
        else:
            who = "no worker is running for it"
        err.write(
            f"{PROG}: WARNING: durable consumer {c.name!r} is {c.lag_seconds:.1f}s behind (its oldest "
            f"unacknowledged event; --max-consumer-lag {max_lag:g}), {c.lag_events} event(s) waiting; "
            f"{who}\n"
        )

"""What the commands print: text tables, events as JSON lines, installer reports, status (text or JSON)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any, TextIO

import msgspec

from .. import (
    ChangeStreamStatus,
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
    "print_actions",
    "print_event",
    "print_status",
    "status_to_json",
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


def status_to_json(status: InstallStatus) -> dict[str, Any]:
    """The installer's status as a JSON-ready dict (``status --json``).

    ``change_streams`` lists every change stream slot (with ``lag_bytes`` and
    ``warning``); ``lagging_change_streams`` names those with a warning.
    """
    data = dataclasses.asdict(status)
    data["ok"] = status.ok
    data["lagging_change_streams"] = [s.slot for s in status.lagging_change_streams]
    return data


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


def print_status(status: InstallStatus, out: TextIO) -> None:
    """``status`` as text: what is installed, the watched tables, the change stream slots, a verdict."""
    for label, state in (
        ("functions", status.function_state),
        ("ddl triggers", status.ddl_state),
        ("auto-rebuild", status.auto_rebuild_state),
        ("durable", status.durable_state),
    ):
        out.write(f"{label:<14}{state or 'not installed'}\n")
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
    for problem in status.problems:
        out.write(f"privileges: {problem}\n")
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

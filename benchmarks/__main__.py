"""``python -m benchmarks``: run the benchmarks, print one table, write JSON.

Usage::

    python -m benchmarks                 # everything (< 10 minutes)
    python -m benchmarks --quick         # a rougher run (< 2 minutes)
    python -m benchmarks --only throughput --only latency
    python -m benchmarks --dsn postgresql://user@host/db --json /tmp/bench.json

Without ``--dsn`` (or ``$TRIO_PGEVENTS_BENCH_DSN``) an embedded server is
started (and the writer-cost benchmark starts its own, durable, one).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
import time
import traceback
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from ._common import BenchContext, Result, format_table, log_to_stderr, machine_info, open_server

#: Benchmarks in the order they run. Modules of other topics are optional.
BENCHMARKS = ["throughput", "throughput_fresh", "latency", "decoded", "writers", "memory"]
OPTIONAL = ["installer_ddl", "faults", "durable", "durable_groups", "cdc"]


def _load(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(f"benchmarks.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"benchmarks.{name}":
            return None
        raise


def _as_result(name: str, item: Any) -> Result:
    if isinstance(item, Result):
        return item
    if isinstance(item, dict):
        known = {k: v for k, v in item.items() if k in Result.__dataclass_fields__}
        known.setdefault("bench", name)
        known.setdefault("case", "?")
        known.setdefault("value", float("nan"))
        known.setdefault("unit", "")
        return Result(**known)
    raise TypeError(f"benchmark {name} returned {item!r}, not a Result")


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the benchmarks, print the table; exit status 0 unless one crashed."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer events and repetitions (< 2 min)")
    parser.add_argument(
        "--only", action="append", default=[], metavar="NAME", help="run only this benchmark (repeatable)"
    )
    parser.add_argument(
        "--json", default="benchmarks/results.json", metavar="PATH", help="where to write the JSON results"
    )
    parser.add_argument(
        "--dsn",
        default=os.environ.get("TRIO_PGEVENTS_BENCH_DSN"),
        help="server to use (default: $TRIO_PGEVENTS_BENCH_DSN, else an embedded one)",
    )
    parser.add_argument("--reps", type=int, default=None, help="repetitions per figure (median reported)")
    args = parser.parse_args(argv)
    # A plain SIGTERM (timeout, CI) still stops the embedded servers.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    available = BENCHMARKS + [name for name in OPTIONAL if _load(name) is not None]
    selected = [name.strip() for item in args.only for name in item.split(",") if name.strip()]
    unknown = [name for name in selected if name not in BENCHMARKS + OPTIONAL]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(available)}")
    names = [name for name in available if not selected or name in selected]
    reps = args.reps or (3 if args.quick else 5)

    log = log_to_stderr

    started = time.perf_counter()
    results: list[Result] = []
    failures: dict[str, str] = {}
    timings: dict[str, float] = {}
    machine = machine_info()
    with open_server(args.dsn) as server:
        log(f"server: {server.description}")
        ctx = BenchContext(server=server, dsn=args.dsn, quick=args.quick, reps=reps, log=log)
        for name in names:
            module = _load(name)
            if module is None or not hasattr(module, "run"):
                continue
            log(f"--- {name}")
            t0 = time.perf_counter()
            try:
                results.extend(_as_result(name, item) for item in module.run(ctx))
            except Exception:
                failures[name] = traceback.format_exc()
                log(f"{name} FAILED:\n{failures[name]}")
            timings[name] = round(time.perf_counter() - t0, 1)
        description = server.description
    total = time.perf_counter() - started

    command = "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:])
    print()
    print(f"trio_pgevents benchmarks: {command.strip()}")
    print(
        f"machine: {machine['cpu']}, {machine['cpus']} CPUs, {machine['platform']}, "
        f"Python {machine['python']}, load {machine['loadavg_at_start']}"
    )
    print(f"server: {description}")
    print(f"each figure: median of {reps} repetitions in this run; total {total:.0f}s")
    print()
    print(format_table(results))
    notes = sorted({f"{r.bench}: {r.note}" for r in results if r.note})
    if notes:
        print()
        for note in notes:
            print(f"  {note}")
    for name in failures:
        print(f"\n{name}: FAILED (see stderr)")

    payload = {
        "command": command.strip(),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "server": description,
        "reps": reps,
        "quick": args.quick,
        "seconds": round(total, 1),
        "seconds_per_benchmark": timings,
        "results": [asdict(r) for r in results],
        "failures": failures,
    }
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"\nJSON: {path}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

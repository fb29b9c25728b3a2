"""Throughput, second set-up: a fresh process per client, a 200k backlog in transactions of 50k.

``python -m benchmarks --only throughput_fresh``.

The clients are those of :mod:`benchmarks.throughput`, but each run starts a
new interpreter (``multiprocessing`` spawn) that imports the client's
libraries, connects, LISTENs, and only then asks the parent's producer to
send the backlog: ``BACKLOG`` notifications in transactions of
``PER_TRANSACTION``, while the client is held (as in ``throughput``). Then
the clock starts and the client reads them all. Nothing is warm: no
allocator arenas, no GC generations filled by earlier runs, no imported
code paths already taken -- what a worker started to drain a backlog sees.
Smaller transactions than ``throughput``'s 100k mean more, smaller commits
for the server to deliver (each transaction's notifications arrive together).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
from typing import Any

from ._common import BenchContext, Figures, Producer, Result
from .throughput import ceiling_results, client_results, cpu_results, event_costs, measure, measure_clients

__all__ = ["run", "measure_fresh"]

BACKLOG = 200_000
PER_TRANSACTION = 50_000


class _Relay:
    """Stands in for :class:`Producer` in the child: asks the parent to run the command.

    The set-up's transaction size replaces the client's own (``throughput``'s).
    """

    def __init__(self, pipe: multiprocessing.connection.Connection, per_transaction: int) -> None:
        self._pipe = pipe
        self._per_transaction = per_transaction

    def run(self, command: str, **kwargs: Any) -> dict[str, Any]:
        if "per_transaction" in kwargs:
            kwargs["per_transaction"] = self._per_transaction
        self._pipe.send(("produce", command, kwargs))
        status, report = self._pipe.recv()
        if status != "ok":
            raise RuntimeError(f"producer failed: {report}")
        return dict(report)


def _child(
    uri: str, client: str, count: int, per_transaction: int, pipe: multiprocessing.connection.Connection
) -> None:
    try:
        relay: Any = _Relay(pipe, per_transaction)
        figures = measure(uri, relay, client, count)
    except BaseException as exc:  # reported to the parent
        pipe.send(("error", repr(exc)))
    else:
        pipe.send(("done", tuple(figures)))
    finally:
        pipe.close()


def measure_fresh(
    uri: str, producer: Producer, client: str, count: int = BACKLOG, per_transaction: int = PER_TRANSACTION
) -> Figures:
    """One run of ``client`` in a new process, reading a backlog of ``count``: its figures."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=_child, args=(uri, client, count, per_transaction, child), daemon=True)
    process.start()
    child.close()
    try:
        while True:
            if not parent.poll(300):
                raise TimeoutError(f"{client}: no word from the client process in 300 s")
            message = parent.recv()
            if message[0] == "produce":
                try:
                    report = producer.run(message[1], **message[2])
                except Exception as exc:
                    parent.send(("error", repr(exc)))
                    raise
                parent.send(("ok", report))
            elif message[0] == "done":
                return Figures(*message[1])
            else:
                raise RuntimeError(f"{client} failed in its process: {message[1]}")
    finally:
        process.join(30)
        if process.is_alive():
            process.kill()
            process.join()
        parent.close()


def run(ctx: BenchContext) -> list[Result]:
    """Each client ``ctx.reps`` times (rounds rotated), each run in a fresh process."""
    count = ctx.scale(BACKLOG, 100_000)
    rates, cpu = measure_clients(ctx, "throughput_fresh", measure_fresh, count)
    note = (
        f"fresh process per client; backlog of {count:,} notifications "
        f"(transactions of {PER_TRANSACTION:,}) sent before the clock starts"
    )
    results = client_results("throughput_fresh", rates, note)
    ceilings = ceiling_results("throughput_fresh", cpu, *event_costs())
    return [*results.values(), *cpu_results("throughput_fresh", cpu), *ceilings]

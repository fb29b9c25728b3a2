"""Fault figures: time to detect, time to reconnect, notifications lost while connected.

``python -m benchmarks.faults`` starts a private embedded Postgres and runs the
fault suite's harness (:class:`tests.test_reliability.NumberedRun`): a
producer commits numbered notifications, one per transaction, while the
listening connection is broken in three ways:

- ``terminate``: ``pg_terminate_backend`` on the listening backend;
- ``server stop``: the server is stopped (fast) for ``--outage`` seconds;
- ``half-open``: a TCP proxy between stream and server stops forwarding
  (sockets stay open) for ``--outage`` seconds; only the liveness probe
  (``--probe-interval`` + ``--probe-timeout``) can find it.

Detect = fault -> the gap's ``disconnected_at``. Reconnect = server (or
proxy) reachable again -> the stream LISTENs again; for the server stop,
"reachable" is the end of the last failed connect attempt of a poller
trying every 10 ms (so the figure is never understated). Lost = notifications
committed while the listener was connected that did not arrive (the fault
is injected at a quiet point; see the test module's docstring).
"""

from __future__ import annotations

import argparse
import logging
import statistics
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import sqlalchemy
import trio

from tests.tcp_proxy import TcpProxy
from tests.test_reliability import FaultFigures, NumberedRun, terminate_backend
from trio_pgevents import open_event_stream
from trio_pgevents.testing import EmbeddedPostgres


def _summary(values: Sequence[float]) -> str:
    if not values:
        return "-"
    return f"{min(values):.3f} / {statistics.median(values):.3f} / {max(values):.3f}"


async def _run(
    pg: EmbeddedPostgres,
    url: str,
    channel: str,
    faults: int,
    inject: Callable[[NumberedRun, int], Awaitable[None]],
    **options: Any,
) -> NumberedRun:
    engine = sqlalchemy.create_engine(url)
    try:
        async with open_event_stream(engine, [channel], **options) as stream:
            run = NumberedRun(stream, pg.dsn, channel, total=10**9)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run.consume)
                nursery.start_soon(run.produce)
                for i in range(faults):
                    # Each connection carries at least 1000 numbers before it is broken.
                    await run.committed_at_least(len(run.committed) + 1000)
                    await inject(run, i)
                # 1000 more after the last reconnect, then stop.
                run.total = min(run.total, run.next_number + 1000)
                await run.finish(timeout=120)
                nursery.cancel_scope.cancel()
        run.check(faults=faults)
        return run
    finally:
        engine.dispose()


async def main_async(args: argparse.Namespace) -> None:
    """Run the three fault kinds and print their figures."""
    pg = EmbeddedPostgres()
    await trio.to_thread.run_sync(pg.start)
    rows: list[tuple[str, list[FaultFigures], NumberedRun]] = []
    try:
        # 1. pg_terminate_backend
        async def terminate(run: NumberedRun, _: int) -> None:
            await run.fault("terminate", lambda: terminate_backend(pg.dsn, run.stream))

        run = await _run(pg, pg.url, "faults_terminate", args.terminations, terminate)
        rows.append(("terminate", run.figures, run))

        # 2. server stopped and started again
        async def stop(run: NumberedRun, _: int) -> None:
            await run.fault(
                "server stop",
                lambda: trio.to_thread.run_sync(pg.stop),
                heal=lambda: trio.to_thread.run_sync(pg.start),
                outage=args.outage,
            )

        run = await _run(pg, pg.url, "faults_stop", args.stops, stop)
        rows.append((f"server stop {args.outage:g}s", run.figures, run))

        # 3. half-open: the proxy stops forwarding
        async with trio.open_nursery() as nursery:
            proxy = TcpProxy(pg.host, pg.port)
            port = await nursery.start(proxy.run)
            proxied = f"postgresql+psycopg2://{pg.user}@127.0.0.1:{port}/{pg.database}"

            async def pause() -> None:
                proxy.pause()
                await trio.lowlevel.checkpoint()

            async def resume() -> None:
                proxy.resume()
                await trio.lowlevel.checkpoint()

            async def half_open(run: NumberedRun, _: int) -> None:
                await run.fault("half-open", pause, heal=resume, outage=args.outage)

            run = await _run(
                pg,
                proxied,
                "faults_half_open",
                args.half_opens,
                half_open,
                probe_interval=args.probe_interval,
                probe_timeout=args.probe_timeout,
                connect_timeout=1.0,
            )
            rows.append(
                (f"half-open (probe {args.probe_interval:g}+{args.probe_timeout:g}s)", run.figures, run)
            )
            nursery.cancel_scope.cancel()
    finally:
        await trio.to_thread.run_sync(pg.cleanup)

    print(
        f"{'fault':<28} {'n':>2}  {'detect s min/med/max':<24} {'reconnect s min/med/max':<24} "
        f"{'required':>8} {'lost':>4}"
    )
    for label, figures, run in rows:
        print(
            f"{label:<28} {len(figures):>2}  {_summary([f.detect for f in figures]):<24} "
            f"{_summary([f.reconnect for f in figures]):<24} {run.required_count:>8} "
            f"{len(run.lost_while_connected()):>4}"
        )


def main(argv: Sequence[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.faults", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--notifications", type=int, default=10_000, help="numbered notifications (terminate run)"
    )
    parser.add_argument("--terminations", type=int, default=5)
    parser.add_argument("--stops", type=int, default=2)
    parser.add_argument("--half-opens", type=int, default=3)
    parser.add_argument("--outage", type=float, default=3.0, help="seconds the server/proxy stays down")
    parser.add_argument("--probe-interval", type=float, default=1.0)
    parser.add_argument("--probe-timeout", type=float, default=1.0)
    parser.add_argument("--verbose", action="store_true", help="show the library's reconnect log")
    args = parser.parse_args(argv)
    if not args.verbose:
        logging.getLogger("trio_pgevents").setLevel(logging.ERROR)
    trio.run(main_async, args)


if __name__ == "__main__":
    main()

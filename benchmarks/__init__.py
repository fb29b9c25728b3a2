"""Benchmarks of trio_pgevents against its peers: ``python -m benchmarks``.

Every figure is the median of several repetitions taken in the same run, and
every ratio is against a baseline measured in the same run (see
``benchmarks/__main__.py`` for the options, and docs/performance.md for
the figures).

A benchmark is a module here with ``run(ctx: BenchContext) -> list[Result]``
(both in :mod:`benchmarks._common`); ``__main__`` runs ``throughput``,
``latency``, ``decoded``, ``writers``, ``memory`` and, when present, the
optional ``installer_ddl``, ``faults``, ``durable`` and ``cdc`` modules.
"""

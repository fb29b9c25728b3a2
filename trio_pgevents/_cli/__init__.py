"""The ``trio-pgevents`` command line (also ``python -m trio_pgevents``).

Commands: ``build``, ``worker``, ``listen``, ``status``, ``uninstall``,
``drop-change-stream``, ``demo``.
Settings follow pg_events (see :mod:`trio_pgevents._cli.settings`). Exit status:
0 success, 1 failure (or ``status`` found something OUTDATED/MISSING),
2 bad usage or settings (one line naming what was wrong; ``--debug`` adds the
traceback), 3 ``status`` found a change stream slot past ``--max-slot-lag``
(or lost), or a durable consumer past ``--max-consumer-lag``, and nothing
OUTDATED/MISSING (1 wins when both), 130 interrupted before the command could
stop gracefully.

The CLI uses the library (its root and core modules), never the reverse:
``entrypoint`` (``main``) -> ``parser`` -> ``commands/*`` -> ``database``,
``signals``, ``output``, ``progress``, ``dispatch`` (the worker's callback
engine), ``metrics`` (and ``prometheus``, imported only for
``--metrics-port``), ``settings``, ``demo``; ``arguments``, ``exits`` and
``defaults`` are shared by all.
"""

from .entrypoint import main
from .parser import build_parser

__all__ = ["main", "build_parser"]

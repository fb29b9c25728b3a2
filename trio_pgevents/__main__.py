"""``python -m trio_pgevents``: the same as the ``trio-pgevents`` command."""

from ._cli import main

raise SystemExit(main())

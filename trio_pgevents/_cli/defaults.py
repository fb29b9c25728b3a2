"""Names and defaults that the parser and several commands share."""

from __future__ import annotations

__all__ = ["DEFAULT_CHANNEL", "DEFAULT_INSTALLER_SCHEMA", "DEFAULT_METRICS_HOST", "PROG"]

#: The command's name, in usage lines, error lines and ``application_name``.
PROG = "trio-pgevents"
#: The installer's NOTIFY channel, which ``worker`` listens on unless told otherwise.
DEFAULT_CHANNEL = "pgevents"
#: The schema holding trio_pgevents' own functions and tables (the installer's default).
DEFAULT_INSTALLER_SCHEMA = "pgevents"
#: Where ``worker --metrics-port`` listens unless told otherwise: this host only.
DEFAULT_METRICS_HOST = "127.0.0.1"

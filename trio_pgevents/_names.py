"""Checking names before they reach the server: one rule for every identifier and label.

Channel, schema, table, publication and consumer names are strings Postgres
must store exactly as given. Postgres silently truncates identifiers longer
than 63 bytes (``NAMEDATALEN - 1``), rejects NUL, and text that is not valid
Unicode (a lone surrogate) cannot be sent at all; each of these gets a
:class:`ConfigurationError` naming what was wrong, before anything connects.
"""

from __future__ import annotations

import re

from ._errors import ConfigurationError, InvalidChannelError

__all__ = ["MAX_IDENTIFIER_BYTES", "check_channel", "check_identifier", "check_slot_name", "check_text"]

#: Postgres truncates identifiers to NAMEDATALEN-1 bytes.
MAX_IDENTIFIER_BYTES = 63
#: Replication slot names: what ``pg_create_logical_replication_slot`` accepts.
_SLOT_NAME = re.compile(r"[a-z0-9_]{1,63}")


def check_text(what: str, value: object, *, error: type[ConfigurationError] = ConfigurationError) -> str:
    """``value`` if it is a non-empty str Postgres can store (no NUL, valid Unicode)."""
    if not isinstance(value, str):
        raise error(f"{what} must be a str, not {type(value).__name__}: {value!r}")
    if not value:
        raise error(f"{what} must not be empty")
    if "\x00" in value:
        raise error(f"{what} {value!r} contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise error(f"{what} {value!r} is not valid Unicode ({exc.reason})") from None
    return value


def check_identifier(
    what: str, value: object, *, error: type[ConfigurationError] = ConfigurationError
) -> str:
    """``value`` if Postgres accepts it as an identifier unchanged (quoted: any character)."""
    name = check_text(what, value, error=error)
    size = len(name.encode("utf-8"))
    if size > MAX_IDENTIFIER_BYTES:
        raise error(
            f"{what} {name[:20]!r}... is {size} bytes; Postgres truncates names longer than "
            f"{MAX_IDENTIFIER_BYTES} bytes (it would silently use another name)"
        )
    return name


def check_channel(channel: object) -> str:
    """``channel`` if LISTEN/NOTIFY would use it unchanged (:class:`InvalidChannelError` if not)."""
    return check_identifier("channel name", channel, error=InvalidChannelError)


def check_slot_name(slot: object) -> str:
    """``slot`` if Postgres accepts it as a replication slot name (lower-case letters, digits, ``_``)."""
    if not isinstance(slot, str) or not _SLOT_NAME.fullmatch(slot):
        raise ConfigurationError(
            f"slot {slot!r} is not a valid replication slot name: use 1-63 characters "
            "of lower-case letters, digits and underscores"
        )
    return slot

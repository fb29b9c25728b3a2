"""The SQL the installer runs, and the hashes that tell whether it changed.

This package holds the templates (``*.sql``: readable SQL and PL/pgSQL with
``{placeholders}``) and the code that renders them: :mod:`.base` (constants,
hashes, object names, quoting), :mod:`.functions` (the function definitions)
and :mod:`.builder` (:class:`SqlBuilder`: every other statement and script).

Every object the installer creates carries ``trio_pgevents <hash>`` in its
``COMMENT``, where the hash is the SHA-256 of the object's rendered
definition. ``status()`` compares comments with what this package would build
now: a different comment means OUTDATED (an upgrade changed the SQL).

Templates are rendered with ``psycopg2.sql``, so the schema name is always a
quoted identifier and every value a quoted literal (nothing user-supplied is
formatted into SQL by hand). Rendering needs a live psycopg2 connection
(quoting depends on its encoding).

Privileges (the security model, see docs/security.md):

- Nothing is granted to PUBLIC by default: every function has ``EXECUTE``
  revoked from PUBLIC, the schema and tables have no PUBLIC grants.
- Trigger functions run as the writer (``SECURITY INVOKER``), except
  ``outbox_row``, which appends to the outbox for writers that have no
  privilege on it. It is ``SECURITY DEFINER`` owned by a dedicated role
  (``trio_pgevents_<hash>_writer``: ``NOLOGIN``, no attribute, allowed only to
  read the registry and append to ``events``) when a superuser installs, and
  runs no code a user can define (the row is converted to JSON beforehand by
  ``outbox_capture``, as the writer).
- With auto-rebuild, the role creating a table attaches the triggers itself
  (the event trigger runs as that role), so PUBLIC gets ``USAGE`` on the
  schema, ``SELECT`` on the registry and ``EXECUTE`` on the trigger functions
  and ``trigger_specs``: none of them lets a role do more than it could.
"""

from .base import (
    COMMENT_PREFIX,
    DDL_EVENTS,
    DEFAULT_DDL_EVENTS,
    NOTIFY_MAX_BYTES,
    PAYLOAD_MODES,
    DdlEvents,
    Definition,
    ObjectNames,
    comment_for,
    object_names,
)
from .builder import SqlBuilder
from .functions import FILTER_ERROR, OBSOLETE_FUNCTIONS

__all__ = [
    "COMMENT_PREFIX",
    "DDL_EVENTS",
    "DEFAULT_DDL_EVENTS",
    "FILTER_ERROR",
    "NOTIFY_MAX_BYTES",
    "OBSOLETE_FUNCTIONS",
    "PAYLOAD_MODES",
    "DdlEvents",
    "Definition",
    "ObjectNames",
    "SqlBuilder",
    "comment_for",
    "object_names",
]

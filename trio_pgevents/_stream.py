"""Temporary: the LISTEN stream moved to :mod:`trio_pgevents._listen` (removed once nothing imports it)."""

from ._listen import EventStream as EventStream
from ._listen import connect_event_stream as connect_event_stream
from ._listen import open_event_stream as open_event_stream

"""LISTEN/NOTIFY streams: the listener (one connection each) and the stream the consumer reads."""

from .listener import Listener as Listener
from .stream import EventStream as EventStream
from .stream import StreamStatistics as StreamStatistics
from .stream import connect_event_stream as connect_event_stream
from .stream import open_event_stream as open_event_stream
from .stream import start_event_stream as start_event_stream

__all__ = [
    "EventStream",
    "Listener",
    "StreamStatistics",
    "connect_event_stream",
    "open_event_stream",
    "start_event_stream",
]

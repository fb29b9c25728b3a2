"""Options of an event stream, validated once, in one place."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, get_args

from ._buffer import OverflowPolicy
from ._connection import KeepaliveSettings
from ._decode import Decoder, decode_trigger_payload
from ._errors import ConfigurationError

__all__ = ["GapPolicy", "StreamOptions", "DEFAULT_DECODERS"]

GapPolicy = Literal["event", "raise"]

#: Bound on one connect attempt, seconds (every opener, the installer, the CLI).
DEFAULT_CONNECT_TIMEOUT = 10.0

#: Channels whose payloads are decoded by default: the installer's default channel.
DEFAULT_DECODERS: Mapping[str, Decoder] = {"pgevents": decode_trigger_payload}


def _positive(name: str, value: float | None, *, allow_none: bool = False, allow_zero: bool = False) -> None:
    if value is None and allow_none:
        return
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or math.isnan(value)
        or value < 0
        or (value == 0 and not allow_zero)
    ):
        raise ConfigurationError(f"{name} must be a positive number, not {value!r}")


@dataclass(frozen=True)
class StreamOptions:
    """Everything ``open_event_stream(**options)`` accepts (see its docstring)."""

    max_buffer_size: int = 16384
    overflow: OverflowPolicy = "backpressure"
    on_gap: GapPolicy = "event"
    reconnect: bool = True
    backoff_initial: float = 0.05
    backoff_max: float = 0.5
    max_reconnect_attempts: int | None = None
    reconnect_timeout: float | None = None
    probe_interval: float = 10.0
    probe_timeout: float = 5.0
    queue_usage_warning: float = 0.5
    keepalive: KeepaliveSettings | None = field(default_factory=KeepaliveSettings)
    close_timeout: float = 1.0
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    decoders: Mapping[str, Decoder] = field(default_factory=lambda: dict(DEFAULT_DECODERS))

    def __post_init__(self) -> None:
        if not isinstance(self.max_buffer_size, int) or self.max_buffer_size < 1:
            raise ConfigurationError(f"max_buffer_size must be an int >= 1, not {self.max_buffer_size!r}")
        if self.overflow not in get_args(OverflowPolicy):
            raise ConfigurationError(
                f"overflow must be one of {', '.join(get_args(OverflowPolicy))}, not {self.overflow!r}"
            )
        if self.on_gap not in get_args(GapPolicy):
            raise ConfigurationError(f"on_gap must be 'event' or 'raise', not {self.on_gap!r}")
        for name in (
            "backoff_initial",
            "backoff_max",
            "probe_interval",
            "probe_timeout",
            "close_timeout",
            "connect_timeout",
        ):
            _positive(name, getattr(self, name))
        _positive("reconnect_timeout", self.reconnect_timeout, allow_none=True)
        if self.max_reconnect_attempts is not None and (
            not isinstance(self.max_reconnect_attempts, int) or self.max_reconnect_attempts < 1
        ):
            raise ConfigurationError(
                f"max_reconnect_attempts must be an int >= 1 or None, not {self.max_reconnect_attempts!r}"
            )
        if not 0 < self.queue_usage_warning <= 1:
            raise ConfigurationError(
                f"queue_usage_warning must be in (0, 1], not {self.queue_usage_warning!r}"
            )
        if self.keepalive is not None and not isinstance(self.keepalive, KeepaliveSettings):
            raise ConfigurationError(f"keepalive must be KeepaliveSettings or None, not {self.keepalive!r}")
        if not isinstance(self.decoders, Mapping):
            raise ConfigurationError(
                f"decoders must be a mapping of channel name to decoder, not {type(self.decoders).__name__}"
            )
        for channel, decoder in self.decoders.items():
            if not isinstance(channel, str):
                raise ConfigurationError(f"decoders keys must be channel names, not {channel!r}")
            if not callable(decoder):
                raise ConfigurationError(f"decoders[{channel!r}] must be callable, not {decoder!r}")

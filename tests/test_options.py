"""The one options model (no server): same name, same meaning, same default, same error."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest

from trio_pgevents import ConfigurationError, KeepaliveSettings, StreamOptions
from trio_pgevents._options import (
    ChangeStreamOptions,
    DurableStreamOptions,
    EventStreamOptions,
)

#: Each opener and the options it takes (its TypedDict's keys).
OPENERS: dict[str, frozenset[str]] = {
    "open_event_stream": EventStreamOptions.__optional_keys__,
    "open_durable_stream": DurableStreamOptions.__optional_keys__,
    "open_change_stream": ChangeStreamOptions.__optional_keys__,
}

#: (option, bad value, what the message says): taken by every opener.
SHARED_BAD = [
    ("backoff_initial", "x", "backoff_initial must be a positive number"),
    ("backoff_max", -1, "backoff_max must be a positive number"),
    ("backoff_max", math.nan, "backoff_max must be a positive number"),
    ("connect_timeout", 0, "connect_timeout must be a positive number"),
    ("close_timeout", math.inf, "close_timeout must be a positive number"),
    ("reconnect_timeout", "soon", "reconnect_timeout must be a positive number"),
    ("max_reconnect_attempts", 0, "max_reconnect_attempts must be an int >= 1"),
    ("max_buffer_size", 1.5, "max_buffer_size must be an int >= 1"),
    ("max_buffer_size", True, "max_buffer_size must be an int >= 1"),
    ("reconnect", "yes", "reconnect must be True or False"),
    ("keepalive", "on", "keepalive must be KeepaliveSettings or None"),
]


def test_each_opener_takes_the_options_its_typed_dict_names() -> None:
    shared = frozenset.intersection(*OPENERS.values())
    assert {"max_buffer_size", "reconnect", "connect_timeout", "close_timeout", "keepalive"} <= shared
    assert {"auto_ack", "ack_every", "ack_interval"} <= set(DurableStreamOptions.__optional_keys__)
    assert {"auto_ack", "ack_every", "ack_interval"} <= set(ChangeStreamOptions.__optional_keys__)
    every = {f.name for f in dataclasses.fields(StreamOptions)}
    assert frozenset().union(*OPENERS.values()) == every


def test_defaults_are_the_same_for_every_opener() -> None:
    parsed = {opener: StreamOptions.parse(opener, {}) for opener in OPENERS}
    assert len({repr(options) for options in parsed.values()}) == 1


@pytest.mark.parametrize("opener", OPENERS)
@pytest.mark.parametrize(("name", "value", "message"), SHARED_BAD)
def test_the_same_bad_value_is_the_same_error_in_every_opener(
    opener: str, name: str, value: Any, message: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        StreamOptions.parse(opener, {name: value})
    assert str(caught.value) == f"{message}, not {value!r}"


@pytest.mark.parametrize("opener", OPENERS)
def test_an_unknown_option_is_named_with_what_the_opener_takes(opener: str) -> None:
    with pytest.raises(ConfigurationError, match=rf"{opener}\(\) got 'bogus': no option \(it takes "):
        StreamOptions.parse(opener, {"bogus": 1})


@pytest.mark.parametrize(
    ("opener", "name"),
    [
        ("open_event_stream", "auto_ack"),
        ("open_event_stream", "batch_size"),
        ("open_durable_stream", "decoders"),
        ("open_durable_stream", "linger"),
        ("open_change_stream", "probe_interval"),
        ("open_change_stream", "schema"),
    ],
)
def test_an_option_of_another_stream_says_so(opener: str, name: str) -> None:
    with pytest.raises(ConfigurationError, match=rf"got {name!r}: an option of another stream"):
        StreamOptions.parse(opener, {name: getattr(StreamOptions(), name)})


def test_keepalive_none_means_off_and_settings_are_kept() -> None:
    assert StreamOptions(keepalive=None).keepalive is None
    settings = KeepaliveSettings(idle=5, interval=2, count=2)
    assert StreamOptions(keepalive=settings).keepalive is settings
    assert StreamOptions().keepalive == KeepaliveSettings()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"overflow": "drop"}, "overflow must be one of 'backpressure', 'drop-oldest', 'raise'"),
        ({"on_gap": "ignore"}, "on_gap must be one of 'event', 'raise'"),
        ({"start": "now"}, "start must be one of 'earliest', 'latest'"),
        ({"queue_usage_warning": 0}, r"queue_usage_warning must be in \(0, 1\]"),
        ({"linger": 2}, r"linger must be in \[0, 1\]"),
        ({"decoders": [1]}, "decoders must be a mapping"),
        ({"decoders": {"ch": 1}}, r"decoders\['ch'\] must be callable"),
        ({"schema": "a\x00b"}, "schema"),
        ({"channel": "x" * 60}, "bytes"),  # the wake-up channel <channel>.durable would be truncated
        ({"retention_interval": 0}, "retention_interval must be a positive number"),
        ({"ack_every": 0}, "ack_every must be an int >= 1"),
    ],
)
def test_each_rule_names_the_option(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        StreamOptions(**options)


def test_options_are_frozen() -> None:
    options = StreamOptions()
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.max_buffer_size = 1  # type: ignore[misc]

"""json_text.loads: the stdlib's value, types and errors, whichever decoder answered."""

from __future__ import annotations

import json

import pytest

from tunehouse import json_text

SAME = [
    b'{"train_loss": 1.25, "steps": [1, 2, 3], "none": null, "t": true}',
    b'{"a": 1, "a": 2}',
    b'{"max": 18446744073709551615, "min": -9223372036854775808}',
    b'{"big": 18446744073709551616, "negative": -9223372036854775809}',
    b'{"digits": "12345678901234567890"}',
    b'{"x": 1.0e-7, "y": -0.0, "z": 1E2, "w": 0.1}',
    b'{"s": "\\ud83d\\ude00 \\u00e9 \\u2028"}',
    b'{"nan": NaN, "inf": Infinity, "huge": 1e400}',
    b'{"lone": "\\ud800"}',
    b'\xef\xbb\xbf{"bom": 1}',
    b"  [1, 2, {}]  ",
]


@pytest.mark.parametrize("data", SAME)
def test_a_document_decodes_to_the_stdlibs_value_and_types(data: bytes) -> None:
    value = json_text.loads(data)
    assert repr(value) == repr(json.loads(data))


@pytest.mark.parametrize("data", [b"", b"{", b'{"a": }', b"\xff\xfe{}x", b"[1,]"])
def test_what_the_stdlib_refuses_is_refused_with_its_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        json.loads(data)
    with pytest.raises(ValueError):
        json_text.loads(data)


def test_nesting_past_both_limits_raises_the_stdlibs_recursion_error() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(RecursionError):
        json_text.loads(deep)

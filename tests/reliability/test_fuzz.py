"""Hypothesis on event decoding: random bytes give a clean CuelogError, never another exception.

CUELOG_FUZZ_EXAMPLES sets the examples per test (200 by default; `make soak` runs many more).
"""

from __future__ import annotations

import contextlib
import os

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from cuelog.actors._events import DOMAIN_CODEC, DOMAIN_EVENTS
from cuelog.runtime import CuelogError
from cuelog.runtime._envelope import decode_record

EXAMPLES = int(os.environ.get("CUELOG_FUZZ_EXAMPLES", "200"))
TYPES = sorted({cls.__struct_config__.tag for cls in DOMAIN_EVENTS if cls.__struct_config__.tag})
ANY_TYPE = st.one_of(st.sampled_from([str(t) for t in TYPES]), st.text(max_size=30))


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.binary(max_size=512))
def test_random_record_bytes_decode_or_raise_a_cuelog_error(value: bytes) -> None:
    """Random bytes as a stored record either decode or raise LogFormatError (a CuelogError)."""
    with contextlib.suppress(CuelogError):
        decode_record(value)


@settings(max_examples=EXAMPLES, deadline=None)
@given(ANY_TYPE, st.binary(max_size=512))
def test_random_payload_bytes_decode_or_raise_a_cuelog_error(type_name: str, data: bytes) -> None:
    """Random payload bytes under any event type decode or raise a CuelogError, nothing else."""
    with contextlib.suppress(CuelogError):
        DOMAIN_CODEC.decode(type_name, data)


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    ANY_TYPE,
    st.dictionaries(st.text(max_size=12), st.none() | st.integers(-(2**63), 2**63 - 1) | st.text()),
)
def test_wrong_shaped_payloads_decode_or_raise_a_cuelog_error(
    type_name: str, fields: dict[str, object]
) -> None:
    """Well-formed msgpack maps of the wrong shape decode or raise a CuelogError."""
    with contextlib.suppress(CuelogError):
        DOMAIN_CODEC.decode(type_name, msgspec.msgpack.encode(fields))

"""The read models' shared decode: one payload per (type, data), equal to the codec's, and a
bounded number of them kept."""

from __future__ import annotations

from cuelog.actors._events import DOMAIN_CODEC, SessionCreated, _RecentPayloads
from cuelog.runtime import RecordedEvent
from tests.actors.domain_support import as_record


def _event(seq: int, key: str) -> RecordedEvent:
    payload = SessionCreated(session_key=key, agent_id="default")
    return as_record(payload, seq=seq, stream=f"session:{key}")


def test_a_payload_is_decoded_once_and_equals_the_codecs() -> None:
    recent = _RecentPayloads()
    event = _event(1, "a")
    first = recent(event)
    assert first == DOMAIN_CODEC.decode(event.type, event.data)
    assert recent(event) is first
    # Another event with the same body (another log, a test's fabricated event) is the same
    # payload; another body is another payload.
    assert recent(_event(7, "a")) == first
    assert recent(_event(1, "b")) == SessionCreated(session_key="b", agent_id="default")


def test_it_keeps_a_bounded_number_of_payloads() -> None:
    recent = _RecentPayloads()
    for seq in range(3 * _RecentPayloads.KEPT):
        assert recent(_event(seq, f"s{seq}")) == SessionCreated(
            session_key=f"s{seq}", agent_id="default"
        )
        assert len(recent._payloads) <= _RecentPayloads.KEPT

"""Which source records the workers refuse, and the dead letter each refused one becomes:
pure functions, no Kafka (the agents in streams.app call them; the last check, "unknown
item", needs the catalogue replica and is made there). tests/test_streams_dead_letters.py
fuzzes them.

A record is refused by raising InvalidEvent, and by nothing else: anything else an agent
raises stops the worker (streams.app: the open transaction aborts and the record is
processed again after a restart), so a payload that made these raise something else
would stop every worker that reads it, again and again.
"""

from __future__ import annotations

import time

from gensar.events import DeadLetter, Event, InvalidEvent, ItemUpsert, decode

MAX_DEAD_LETTER_PAYLOAD = 64 * 1024  # characters of the payload kept in a dead letter; bytes in its header
MAX_DETAIL = 2000  # characters of a dead letter's detail, notes on what was cut included


def check_key(key: bytes | None, owner: str) -> None:
    """A record keyed by someone else would land on another partition than its owner's
    state: refuse it rather than split the owner's state."""
    if key != owner.encode():
        raise InvalidEvent("key-mismatch", f"record key {key!r:.80} is not {owner!r:.80}")


def validate(key: bytes | None, payload: bytes | None, schema: type[Event], *, now: float | None = None) -> Event:
    """The event a source record holds, or InvalidEvent saying why it is refused: every
    check but "unknown item"."""
    event = decode(payload, schema, now=now)
    check_key(key, event.item_id if isinstance(event, ItemUpsert) else event.user_id)
    return event


def dead_letter(bad: InvalidEvent, payload: bytes | None, *, topic: str, partition: int, offset: int,
                timestamp: float | None = None) -> tuple[DeadLetter, list[tuple[str, bytes]]]:
    """The dead letter of a refused record, and the headers it adds to the source headers:
    the exact payload bytes, when they fit in MAX_DEAD_LETTER_PAYLOAD. The letter's
    payload is the text (cut at MAX_DEAD_LETTER_PAYLOAD characters); the detail says what
    was cut or left out, within MAX_DETAIL characters."""
    payload = payload or b""
    text = payload.decode(errors="replace")
    notes = []
    if len(text) > MAX_DEAD_LETTER_PAYLOAD:
        notes.append(f"payload cut to {MAX_DEAD_LETTER_PAYLOAD} of {len(text)} characters")
        text = text[:MAX_DEAD_LETTER_PAYLOAD]
    headers = []
    if len(payload) <= MAX_DEAD_LETTER_PAYLOAD:
        headers.append(("payload", payload))  # the exact original bytes
    else:
        notes.append(f"no payload header: {len(payload)} bytes")
    suffix = "".join(f" ({note})" for note in notes)
    # The notes come last and are never cut; a lone surrogate (which JSON cannot carry) is replaced.
    detail = bad.detail[:MAX_DETAIL - len(suffix)].encode("utf-8", "replace").decode() + suffix
    letter = DeadLetter(reason=bad.reason, detail=detail, source_topic=topic, source_partition=partition,
                        source_offset=offset, payload=text, timestamp=time.time() if timestamp is None else timestamp)
    return letter, headers

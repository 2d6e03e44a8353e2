"""The stream workers' decision on each source record (streams.dead_letters), fuzzed: a
record is either accepted as the event it holds, unchanged, or refused with InvalidEvent and
a reason; nothing else escapes (anything else would stop the worker, and every restart would
read the same record again). Each refused record's dead letter is checked too: its reason, a
detail, the payload as text cut at 64 KiB with the cut noted, the exact bytes in a header
when they fit. No broker; the worker-level version is in tests/test_streams_integration.py.

Deterministic: derandomized, no example database."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from gensar.events import (MAX_CLICKS, MAX_FUTURE_S, MAX_TEXT, DeadLetter, Event, InteractionEvent, InvalidEvent,
                           ItemUpsert, SearchEvent, decode)
from streams.dead_letters import MAX_DEAD_LETTER_PAYLOAD, MAX_DETAIL, dead_letter, validate
from streams.state import ItemStats, UserState, apply_item_use, apply_user_event, items_used, samples_for

NOW = 1_750_000_000.0
REASONS = {"malformed-json", "not-an-object", "unsupported-schema-version", "schema-violation", "oversize-field",
           "future-timestamp", "unknown-item", "key-mismatch"}
SCHEMAS = (InteractionEvent, SearchEvent, ItemUpsert)
REQUIRED = {InteractionEvent: ("event_id", "timestamp", "user_id", "item_id", "kind"),
            SearchEvent: ("event_id", "timestamp", "user_id", "query"),
            ItemUpsert: ("event_id", "timestamp", "item_id", "title")}
ID_FIELDS = {InteractionEvent: ("event_id", "user_id", "item_id"), SearchEvent: ("event_id", "user_id"),
             ItemUpsert: ("event_id", "item_id")}
TEXT_FIELDS = {InteractionEvent: (), SearchEvent: ("query",), ItemUpsert: ("title",)}
FUZZ = settings(max_examples=1000, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def owner(event_or_raw, schema) -> str:
    get = event_or_raw.get if isinstance(event_or_raw, dict) else lambda k: getattr(event_or_raw, k)
    return get("item_id") if schema is ItemUpsert else get("user_id")


# --- the decision, and what must hold for each outcome -------------------------------------------


def decide(key: bytes | None, payload: bytes | None, schema: type[Event]) -> Event | InvalidEvent:
    """validate(), and the dead letter of a refusal; anything but InvalidEvent fails the test."""
    try:
        event = validate(key, payload, schema, now=NOW)
    except InvalidEvent as bad:
        check_dead_letter(bad, payload)
        return bad
    check_accepted(event, key, schema)
    return event


def check_dead_letter(bad: InvalidEvent, payload: bytes | None) -> DeadLetter:
    assert bad.reason in REASONS and bad.detail, (bad.reason, bad.detail)
    letter, headers = dead_letter(bad, payload, topic="t.interactions", partition=3, offset=17, timestamp=NOW)
    assert letter.reason == bad.reason and letter.detail and len(letter.detail) <= MAX_DETAIL
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == ("t.interactions", 3, 17)
    raw = payload or b""
    text = raw.decode(errors="replace")
    assert letter.payload == text[:MAX_DEAD_LETTER_PAYLOAD]
    if len(text) > MAX_DEAD_LETTER_PAYLOAD:
        assert f"(payload cut to {MAX_DEAD_LETTER_PAYLOAD} of {len(text)} characters)" in letter.detail
    if len(raw) <= MAX_DEAD_LETTER_PAYLOAD:
        assert headers == [("payload", raw)]
    else:
        assert headers == [] and f"(no payload header: {len(raw)} bytes)" in letter.detail
    assert DeadLetter.model_validate_json(letter.to_bytes()) == letter  # what the agent sends is readable
    return letter


def check_accepted(event: Event, key: bytes | None, schema: type[Event]) -> None:
    """An accepted event is of its schema, keyed by its owner, survives its own round trip, and
    goes through everything the agent does with it without raising."""
    assert type(event) is schema and key == owner(event, schema).encode()
    assert decode(event.to_bytes(), schema, now=NOW) == event
    if isinstance(event, InteractionEvent) and event.value is not None:
        assert math.isfinite(event.value)
    if schema is ItemUpsert:
        return
    state = UserState()
    samples = samples_for(state, event, 50, 20, 20)
    assert all(s.source_event_id == event.event_id for s in samples)
    after = apply_user_event(state, event, "interactions", 5, 50, 20)
    assert UserState.from_bytes(after.to_bytes()) == after
    assert apply_user_event(after, event, "interactions", 5, 50, 20) == after  # idempotent per offset
    for item_id in items_used(event):
        stats = apply_item_use(ItemStats(), event, "interactions", 5)
        stats = apply_item_use(stats, event, "interactions", 6)
        assert ItemStats.from_bytes(stats.to_bytes()).interactions == stats.interactions


# --- strategies ----------------------------------------------------------------------------------


ids = st.text(min_size=1, max_size=128)
texts = st.text(min_size=1, max_size=80) | st.text(min_size=MAX_TEXT - 2, max_size=MAX_TEXT)
timestamps = st.floats(min_value=0, max_value=NOW + MAX_FUTURE_S) | st.integers(0, int(NOW))
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)
non_strings = json_values.filter(lambda v: not isinstance(v, str))
not_numbers = (st.lists(json_scalars, max_size=3) | st.dictionaries(st.text(max_size=5), json_scalars, max_size=3)
               | st.text(alphabet="bcdgkmoprsuvwz -", max_size=8))  # no digits, and no "nan"/"inf" to parse


@st.composite
def valid_raw(draw, schema: type[Event] | None = None) -> tuple[type[Event], dict]:
    """A valid event of `schema` (or any of the three) as the dict a producer serialises."""
    schema = schema or draw(st.sampled_from(SCHEMAS))
    raw: dict = {"event_id": draw(ids), "timestamp": draw(timestamps)}
    if schema is InteractionEvent:
        raw |= {"user_id": draw(ids), "item_id": draw(ids),
                "kind": draw(st.sampled_from(["click", "rate", "tag", "view", "purchase"]))}
        if draw(st.booleans()):
            raw["value"] = draw(st.none() | st.floats(allow_nan=False, allow_infinity=False) | st.integers(-10, 10))
    elif schema is SearchEvent:
        raw |= {"user_id": draw(ids), "query": draw(texts)}
        if draw(st.booleans()):
            raw["clicked_items"] = draw(st.lists(ids, max_size=MAX_CLICKS))
    else:
        raw |= {"item_id": draw(ids), "title": draw(texts)}
        if draw(st.booleans()):
            raw["fields"] = draw(st.dictionaries(st.text(max_size=64), st.text(max_size=200), max_size=4))
    if draw(st.booleans()):
        raw["type"] = schema.model_fields["type"].default
    if draw(st.booleans()):
        raw["schema_version"] = 1
    keys = draw(st.permutations(list(raw)))
    return schema, {k: raw[k] for k in keys}


def dumps(raw: object, ascii_only: bool = True) -> bytes:
    return json.dumps(raw, ensure_ascii=ascii_only).encode()


@st.composite
def near_valid(draw) -> tuple[type[Event], bytes | None, bytes | None, str]:
    """A valid event broken in one way: (schema, key, payload, the reason it must get)."""
    schema, raw = draw(valid_raw())
    key = owner(raw, schema).encode()
    how = draw(st.sampled_from([
        "missing", "extra", "wrong-type", "wrong-literal", "bad-timestamp", "negative-timestamp", "future-timestamp",
        "too-long-id", "too-long-text", "empty-id", "too-many-clicks", "long-field-name", "long-field-value",
        "schema-version", "non-finite-value", "wrong-value", "key-mismatch", "truncated", "not-utf8",
        "deep-nesting", "huge-integer", "not-an-object", "tombstone",
    ]))
    if how == "missing":
        raw.pop(draw(st.sampled_from(REQUIRED[schema])))
        return schema, key, dumps(raw), "schema-violation"
    if how == "extra":
        name = draw(st.text(max_size=40) | st.integers(3000, 80_000).map(lambda n: "k" * n))  # longer than a detail
        if name in schema.model_fields:
            name += "-extra"
        raw[name] = draw(json_values)
        return schema, key, dumps(raw, draw(st.booleans())), "schema-violation"
    if how == "wrong-type":
        raw[draw(st.sampled_from(ID_FIELDS[schema] + TEXT_FIELDS[schema]))] = draw(non_strings)
        return schema, key, dumps(raw), "schema-violation"
    if how == "wrong-literal":
        field = draw(st.sampled_from(["type", "kind"] if schema is InteractionEvent else ["type"]))
        raw[field] = draw(json_values.filter(lambda v: v not in ("interaction", "search", "item", "click", "rate",
                                                                 "tag", "view", "purchase")))
        return schema, key, dumps(raw), "schema-violation"
    if how == "bad-timestamp":
        raw["timestamp"] = draw(not_numbers | st.none() | st.just(float("nan")) | st.just(float("-inf")))
        return schema, key, dumps(raw), "schema-violation"
    if how == "negative-timestamp":
        raw["timestamp"] = draw(st.floats(max_value=-1e-9, allow_infinity=False) | st.integers(max_value=-1))
        return schema, key, dumps(raw), "schema-violation"
    if how == "future-timestamp":
        raw["timestamp"] = draw(st.floats(min_value=NOW + MAX_FUTURE_S + 1) | st.just(float("inf")))
        return schema, key, dumps(raw), "future-timestamp"
    if how == "too-long-id":
        field = draw(st.sampled_from(ID_FIELDS[schema]))
        raw[field] = draw(st.sampled_from("xé字😀")) * draw(st.integers(129, 400) | st.integers(60_000, 100_000))
        return schema, owner(raw, schema).encode(), dumps(raw, draw(st.booleans())), "oversize-field"
    if how == "too-long-text":
        if schema is InteractionEvent:
            return schema, key, dumps(dict(raw, item_id="i" * 129)), "oversize-field"
        raw[TEXT_FIELDS[schema][0]] = "q" * draw(st.integers(MAX_TEXT + 1, 3000) | st.integers(60_000, 200_000))
        return schema, key, dumps(raw), "oversize-field"
    if how == "empty-id":
        raw[draw(st.sampled_from(ID_FIELDS[schema]))] = ""
        return schema, key, dumps(raw), "schema-violation"
    if how == "too-many-clicks":
        raw = dict(draw(valid_raw(SearchEvent))[1], clicked_items=draw(st.lists(ids, min_size=MAX_CLICKS + 1,
                                                                                max_size=MAX_CLICKS + 30)))
        return SearchEvent, raw["user_id"].encode(), dumps(raw), "oversize-field"
    if how in ("long-field-name", "long-field-value"):
        raw = draw(valid_raw(ItemUpsert))[1]
        long = "f" * draw(st.integers(65 if how == "long-field-name" else MAX_TEXT + 1, 5000))
        raw["fields"] = {long: "v"} if how == "long-field-name" else {"k": long}
        return ItemUpsert, raw["item_id"].encode(), dumps(raw), "oversize-field"
    if how == "schema-version":
        raw["schema_version"] = draw(json_values.filter(lambda v: not v == 1))
        return schema, key, dumps(raw), "unsupported-schema-version"
    if how in ("non-finite-value", "wrong-value"):
        raw = draw(valid_raw(InteractionEvent))[1]
        if how == "wrong-value":
            raw["value"] = draw(not_numbers)
            return InteractionEvent, raw["user_id"].encode(), dumps(raw), "schema-violation"
        raw.pop("value", None)
        literal = draw(st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e999", b"-2e400"]))
        payload = dumps(raw)[:-1] + b', "value": ' + literal + b"}"
        return InteractionEvent, raw["user_id"].encode(), payload, "schema-violation"
    if how == "key-mismatch":
        other = draw(st.none() | st.binary(max_size=40).filter(lambda k: k != key))
        return schema, other, dumps(raw), "key-mismatch"
    payload = dumps(raw, draw(st.booleans()))
    if how == "truncated":  # the object's closing brace is its last byte: any prefix is broken
        return schema, key, payload[:draw(st.integers(0, len(payload) - 1))], "malformed-json"
    if how == "not-utf8":  # a byte that no valid UTF-8 text holds there, after the opening brace
        at = draw(st.integers(1, len(payload) - 1))
        bad = draw(st.sampled_from([0x80, 0xA9, 0xBF, 0xC0, 0xC1, 0xF5, 0xFE, 0xFF]))
        return schema, key, payload[:at] + bytes([bad]) + payload[at:], "malformed-json"
    if how == "deep-nesting":  # deeper than the parser recurses, in a field of the event or a new one
        depth = draw(st.integers(3000, 200_000))
        field = draw(st.sampled_from([*REQUIRED[schema], "nested"])).encode()
        opening, closing = draw(st.sampled_from([(b"[", b"]"), (b'{"a": ', b"}")]))
        return schema, key, payload[:-1] + b', "' + field + b'": ' + opening * depth + b"0" + closing * depth + b"}", \
            "malformed-json"
    if how == "huge-integer":
        digits = draw(st.integers(4301, 60_000))
        where = draw(st.sampled_from(["timestamp", "extra", "nested"]))
        number = draw(st.sampled_from("123456789")).encode() + b"0" * (digits - 1)
        if where == "timestamp":
            raw["timestamp"] = 0
            payload = dumps(raw).replace(b'"timestamp": 0', b'"timestamp": ' + number, 1)
        elif where == "extra":
            payload = dumps(raw)[:-1] + b', "n": ' + number + b"}"
        else:
            payload = dumps(raw)[:-1] + b', "n": [{"a": [' + number + b"]}]}"
        return schema, key, payload, "malformed-json"
    if how == "not-an-object":
        value = draw(json_values.filter(lambda v: not isinstance(v, dict)))
        return schema, key, dumps(value), "not-an-object"
    return schema, key, draw(st.sampled_from([None, b""])), "malformed-json"  # a tombstone


# --- the fuzz ------------------------------------------------------------------------------------


@FUZZ
@given(valid_raw(), st.booleans())
def test_every_valid_event_is_accepted_unchanged(generated, ascii_only):
    schema, raw = generated
    key = owner(raw, schema).encode()
    event = decide(key, dumps(raw, ascii_only), schema)
    assert not isinstance(event, InvalidEvent), (event.reason, event.detail, raw)
    for field, value in raw.items():  # every field as sent (an integer timestamp as its float)
        assert getattr(event, field) == value, field
    assert type(event.timestamp) is float


@FUZZ
@given(near_valid())
def test_every_near_valid_event_is_refused_with_its_reason(case):
    schema, key, payload, reason = case
    outcome = decide(key, payload, schema)
    assert isinstance(outcome, InvalidEvent), f"accepted: {payload[:300]!r}"
    assert outcome.reason == reason, (outcome.reason, outcome.detail[:200], (payload or b"")[:300])


@FUZZ
@given(st.sampled_from(SCHEMAS), st.none() | st.binary(max_size=20),
       st.binary(max_size=300)
       | json_values.map(lambda v: json.dumps(v).encode())
       | st.tuples(valid_raw(), st.dictionaries(st.text(max_size=12), json_values, max_size=4))
       .map(lambda c: json.dumps({**c[0][1], **c[1]}).encode())  # a valid event, any fields overwritten or added
       | st.binary(min_size=1, max_size=8).map(lambda b: b * 9000)  # long, repetitive, mostly not UTF-8
       | st.tuples(valid_raw(), st.integers(0, 10**6), st.sampled_from([b"\xed\xa0\x80", b"\xef\xbb\xbf", b"\x00"]))
       .map(lambda c: (lambda p, at: p[:at] + c[2] + p[at:])(dumps(c[0][1], False), c[1] % 200)))  # a surrogate
       # encoded as UTF-8 (Python's JSON reads it as one), a byte-order mark, a NUL, anywhere in the first bytes
def test_arbitrary_payloads_are_accepted_as_valid_events_or_refused_with_a_reason(schema, key, payload):
    decide(key, payload, schema)  # either outcome, checked; nothing else may come out


# --- 64 KiB: the dead letter's payload limit -----------------------------------------------------


def interaction(**extra) -> dict:
    return {"event_id": "e-1", "timestamp": NOW - 10, "user_id": "u-1", "item_id": "i-1", "kind": "click", **extra}


@pytest.mark.parametrize("size", [MAX_DEAD_LETTER_PAYLOAD - 1, MAX_DEAD_LETTER_PAYLOAD, MAX_DEAD_LETTER_PAYLOAD + 1,
                                  100_000, 900_000])
def test_a_payload_over_64_kib_is_cut_and_the_dead_letter_says_so(size):
    payload = dumps(interaction(note=""))
    payload = payload[:-2] + b"x" * (size - len(payload)) + b'"}'  # an unknown field: schema-violation
    assert len(payload) == size
    bad = decide(b"u-1", payload, InteractionEvent)
    assert isinstance(bad, InvalidEvent) and bad.reason == "schema-violation"
    letter, headers = dead_letter(bad, payload, topic="t", partition=0, offset=0)
    if size <= MAX_DEAD_LETTER_PAYLOAD:
        assert letter.payload == payload.decode() and headers == [("payload", payload)]
        assert "cut" not in letter.detail and "header" not in letter.detail
    else:
        assert letter.payload == payload.decode()[:MAX_DEAD_LETTER_PAYLOAD] and len(letter.payload) == MAX_DEAD_LETTER_PAYLOAD
        assert letter.detail.endswith(f" (payload cut to {MAX_DEAD_LETTER_PAYLOAD} of {size} characters)"
                                      f" (no payload header: {size} bytes)")
        assert headers == []
        assert len(letter.to_bytes()) < MAX_DEAD_LETTER_PAYLOAD + 4096


def test_the_cut_is_noted_even_when_the_detail_itself_is_long():
    """A field name longer than a detail used to push the note out of the cut detail."""
    payload = dumps(interaction(**{"k" * 3000: "v" * 70_000}))
    bad = decide(b"u-1", payload, InteractionEvent)
    assert bad.reason == "schema-violation" and len(bad.detail) > MAX_DETAIL
    letter, _ = dead_letter(bad, payload, topic="t", partition=0, offset=0)
    assert len(letter.detail) == MAX_DETAIL and letter.detail.startswith("kkkk")
    assert f"(payload cut to {MAX_DEAD_LETTER_PAYLOAD} of {len(payload)} characters)" in letter.detail


def test_over_64_kib_of_bytes_in_fewer_characters_keeps_the_text_and_says_the_header_is_left_out():
    payload = dumps(interaction(note="é" * 40_000), ascii_only=False)  # 80 KB, 40k characters
    bad = decide(b"u-1", payload, InteractionEvent)
    letter, headers = dead_letter(bad, payload, topic="t", partition=0, offset=0)
    assert letter.payload == payload.decode() and headers == []
    assert "cut" not in letter.detail and f"(no payload header: {len(payload)} bytes)" in letter.detail


def test_invalid_utf8_over_64_kib_is_cut_as_replacement_characters():
    payload = b"\xff\xfe\xfd" * 30_000
    bad = decide(b"u-1", payload, SearchEvent)
    assert bad.reason == "malformed-json"
    letter, headers = dead_letter(bad, payload, topic="t", partition=0, offset=0)
    assert letter.payload == "\ufffd" * MAX_DEAD_LETTER_PAYLOAD and headers == []
    assert f"(payload cut to {MAX_DEAD_LETTER_PAYLOAD} of 90000 characters)" in letter.detail


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(st.integers(-40, 40), st.sampled_from(["a", "é", "字", "😀", "\x00"]), st.booleans())
def test_the_limit_holds_at_every_size_around_it(offset, char, ascii_only):
    head, tail = dumps(interaction(note=""), ascii_only)[:-2], b'"}'  # the note's text goes in between
    unit = json.dumps(char, ensure_ascii=ascii_only)[1:-1].encode()  # one character as JSON writes it
    payload = head + unit * max(0, (MAX_DEAD_LETTER_PAYLOAD + offset - len(head) - len(tail)) // len(unit)) + tail
    bad = decide(b"u-1", payload, InteractionEvent)
    assert isinstance(bad, InvalidEvent)  # check_dead_letter asserted the cut, the header and the notes


# --- what the fuzz found: each once stopped a worker (they are in the integration test too) -------


@pytest.mark.parametrize("payload", [
    b'{"event_id": "e", "timestamp": ' + b"9" * 5000 + b"}",  # ValueError: int over 4300 digits
    b'{"item_id": "x", "title": ' + b"1" * 4400 + b"}",
    b"[" * 50_000,  # RecursionError
    b'{"event_id": "e", "n": ' + b"{\"a\": " * 5000 + b"1" + b"}" * 5000 + b"}",
])
@pytest.mark.parametrize("schema", SCHEMAS)
def test_payloads_the_json_parser_raises_other_errors_on_are_malformed_json(payload, schema):
    with pytest.raises(InvalidEvent) as refused:
        decode(payload, schema, now=NOW)
    assert refused.value.reason == "malformed-json" and refused.value.detail


@pytest.mark.parametrize("value", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_a_non_finite_rating_is_refused(value):
    """Accepted, it made its item's rating sum NaN (written as null, which the item's
    statistics then could not be read back from)."""
    payload = dumps(interaction(kind="rate"))[:-1] + b', "value": ' + value + b"}"
    bad = decide(b"u-1", payload, InteractionEvent)
    assert bad.reason == "schema-violation" and bad.detail.startswith("value:")


def test_item_statistics_that_overflowed_to_infinity_are_still_readable():
    big = InteractionEvent(event_id="e", timestamp=1.0, user_id="u", item_id="i", kind="rate", value=1.7e308)
    stats = apply_item_use(apply_item_use(ItemStats(), big, "interactions", 0), big, "interactions", 1)
    assert stats.rating_sum == math.inf
    assert ItemStats.from_bytes(stats.to_bytes()).rating_sum == math.inf


def test_a_detail_with_a_lone_surrogate_still_makes_a_sendable_dead_letter():
    letter, _ = dead_letter(InvalidEvent("schema-violation", "fields.\ud800: bad"), b"{}", topic="t", partition=0,
                            offset=0)
    assert DeadLetter.model_validate_json(letter.to_bytes()).detail == "fields.?: bad"


"""Event schemas: what is accepted, and the reason label for what is refused."""

from __future__ import annotations

import json

import pytest

from gensar.events import InteractionEvent, InvalidEvent, SearchEvent, decode

NOW = 1_700_000_000.0
GOOD = {"event_id": "e1", "timestamp": NOW, "user_id": "u1", "query": "space opera", "clicked_items": ["1"]}


def test_round_trip_keeps_every_field():
    event = SearchEvent(**GOOD)
    assert decode(event.to_bytes(), SearchEvent, now=NOW) == event
    assert json.loads(event.to_bytes())["schema_version"] == 1
    assert event.key() == b"u1"


@pytest.mark.parametrize("payload, reason", [
    (b"{not json", "malformed-json"),
    (b"\xff\xfe", "malformed-json"),
    (b"[1, 2]", "not-an-object"),
    (json.dumps({**GOOD, "schema_version": 2}).encode(), "unsupported-schema-version"),
    (json.dumps({**GOOD, "extra": 1}).encode(), "schema-violation"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "user_id"}).encode(), "schema-violation"),
    (json.dumps({**GOOD, "timestamp": "yesterday"}).encode(), "schema-violation"),
    (json.dumps({**GOOD, "query": "x" * 5000}).encode(), "oversize-field"),
    (json.dumps({**GOOD, "query": ""}).encode(), "schema-violation"),
    (json.dumps({**GOOD, "timestamp": NOW + 86400}).encode(), "future-timestamp"),
])
def test_refused_payloads_carry_a_reason(payload, reason):
    with pytest.raises(InvalidEvent) as err:
        decode(payload, SearchEvent, now=NOW)
    assert err.value.reason == reason
    assert err.value.detail


def test_interaction_kind_is_an_enum():
    raw = {"event_id": "e2", "timestamp": NOW, "user_id": "u", "item_id": "1", "kind": "like"}
    with pytest.raises(InvalidEvent, match="kind"):
        decode(json.dumps(raw).encode(), InteractionEvent, now=NOW)
    raw["kind"] = "click"
    assert decode(json.dumps(raw).encode(), InteractionEvent, now=NOW).kind == "click"


def test_kafka_security_settings_map_to_client_options():
    from pydantic import ValidationError

    from gensar.settings import KafkaSettings

    assert KafkaSettings().client_options() == {"bootstrap_servers": "127.0.0.1:9092", "security_protocol": "PLAINTEXT"}
    sasl = KafkaSettings(bootstrap_servers="k:9093", security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                         sasl_username="gensar", sasl_password="s3cret", ssl_cafile="/etc/ca.pem")
    options = sasl.client_options()
    assert options["sasl_plain_password"] == "s3cret" and options["ssl_cafile"] == "/etc/ca.pem"
    assert "s3cret" not in repr(sasl), "the password never shows in logs"
    with pytest.raises(ValidationError, match="needs sasl_mechanism"):
        KafkaSettings(security_protocol="SASL_PLAINTEXT")

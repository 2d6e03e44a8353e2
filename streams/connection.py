"""The shared Kafka connection settings (TLS, SASL) in the forms Faust and aiokafka take."""

from __future__ import annotations

import ssl

import faust

from gensar.settings import KafkaSettings


def _ssl_context(kafka: KafkaSettings) -> ssl.SSLContext | None:
    if not kafka.security_protocol.endswith("SSL"):
        return None
    return ssl.create_default_context(cafile=str(kafka.ssl_cafile) if kafka.ssl_cafile else None)


def faust_broker(kafka: KafkaSettings) -> dict:
    """`broker` and `broker_credentials` for faust.App."""
    options: dict = {"broker": [f"kafka://{server.strip()}" for server in kafka.bootstrap_servers.split(",")]}
    context = _ssl_context(kafka)
    if kafka.security_protocol.startswith("SASL"):
        options["broker_credentials"] = faust.SASLCredentials(
            username=kafka.sasl_username, password=kafka.sasl_password.get_secret_value(),
            mechanism=kafka.sasl_mechanism, ssl_context=context)
    elif context is not None:
        options["broker_credentials"] = faust.SSLCredentials(context)
    return options


def aiokafka_options(kafka: KafkaSettings) -> dict:
    """Connection options for an aiokafka client."""
    options: dict = {"bootstrap_servers": kafka.bootstrap_servers, "security_protocol": kafka.security_protocol}
    if (context := _ssl_context(kafka)) is not None:
        options["ssl_context"] = context
    if kafka.security_protocol.startswith("SASL"):
        options |= {"sasl_mechanism": kafka.sasl_mechanism, "sasl_plain_username": kafka.sasl_username,
                    "sasl_plain_password": kafka.sasl_password.get_secret_value()}
    return options

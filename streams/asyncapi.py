"""The AsyncAPI 3.0 document of Eventide's topics and events.

``eventide asyncapi`` writes it and the command API serves it at
``GET /asyncapi.json``: one channel per topic of the catalogue (its address
with the configured prefix, its key, partitions, replication, retention and
cleanup policy as Kafka bindings), the retry and dead-letter companions of every
consumed topic, one message per registered event version (its payload the
event's JSON Schema, :mod:`schemas.json_schema`, the Avro schema id beside it),
and the operations: producers send events, Eventide's projections receive them
in their consumer group.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Any

from schemas.json_schema import event_schema
from schemas.registry import Registry, SchemaEntry

from .catalogue import CATALOGUE, KEY_FIELDS, TopicSpec
from .failures import dlq_topic, retry_topic
from .settings import Settings

VERSION = "3.0.0"
KAFKA_BINDING = "0.5.0"
TITLE = "Eventide"


def message_id(entry: SchemaEntry) -> str:
    """The component key of an event version's message (``order.placed-1.0``)."""
    return f"{entry.name}-{entry.version}"


def channel_id(topic: str) -> str:
    """A channel key from a topic name (``order-events.dlq`` → ``orderEventsDlq``)."""
    words = [w for w in re.split(r"[^A-Za-z0-9]+", topic) if w]
    return words[0] + "".join(w[:1].upper() + w[1:] for w in words[1:])


def document(settings: Settings, registry: Registry | None = None) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of ``settings``' topics and the registry's events."""
    registry = registry or Registry.load()
    limits = settings.limits
    messages: dict[str, Any] = {}
    for entry in registry:
        payload = {
            k: v for k, v in event_schema(entry, limits).items() if k not in ("$schema", "$id")
        }
        messages[message_id(entry)] = {
            "name": entry.name,
            "title": f"{entry.name} {entry.version}",
            "summary": entry.payload.get("doc", entry.name),
            "contentType": "application/json",
            "headers": _HEADERS,
            "payload": payload,
            "description": (
                f"The JSON form. The same event also travels as Avro (content-type "
                f"application/avro, Confluent wire format) under schema id {entry.id} of "
                "schemas/registry.json."
            ),
            "bindings": {
                "kafka": {
                    "key": {"type": "string", "description": f"data.{_key_field(entry.name)}"},
                    "bindingVersion": KAFKA_BINDING,
                }
            },
            "x-eventide-avro-schema-id": entry.id,
        }
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for spec in CATALOGUE:
        _add_topic(settings, registry, spec, channels, operations)
    return {
        "asyncapi": VERSION,
        "info": {
            "title": TITLE,
            "version": "1.0.0",
            "description": (
                "Domain events keyed by entity id, the read models Eventide keeps from them "
                f"and its failure topics. Topic prefix {settings.topic_prefix!r}, "
                f"{settings.partitions} partitions per topic (co-partitioned: a key's "
                "events share a partition number on every topic), keys hashed with murmur2 "
                "as Kafka's default partitioner does."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "kafka": {
                "host": ",".join(settings.bootstrap_servers),
                "protocol": "kafka",
                "description": f"Security protocol {settings.kafka_security_protocol}.",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    }


def _key_field(name: str) -> str:
    """The data field whose value is the Kafka key of event ``name`` (DESIGN.md)."""
    entity = name.split(".", 1)[0]
    return KEY_FIELDS.get(entity, f"{entity}Id")


_HEADERS = {
    "type": "object",
    "properties": {
        "content-type": {
            "type": "string",
            "description": "application/json or application/avro (default: from the first byte)",
        },
    },
}


def _add_topic(
    settings: Settings,
    registry: Registry,
    spec: TopicSpec,
    channels: dict[str, Any],
    operations: dict[str, Any],
) -> None:
    topic = settings.topic(spec.name)
    events = sorted(
        {message_id(e) for e in registry if spec.events and fnmatch.fnmatch(e.name, spec.events)}
    )
    refs = {m: {"$ref": f"#/components/messages/{m}"} for m in events}
    configs: dict[str, Any] = {
        "cleanup.policy": ["compact"] if spec.compacted else ["delete"],
    }
    if spec.retention_ms is not None:
        configs["retention.ms"] = spec.retention_ms
    main = channel_id(spec.name)
    channels[main] = {
        "address": topic,
        "title": spec.name,
        "description": spec.description,
        "messages": refs,
        "bindings": {"kafka": _channel_binding(settings, topic, configs)},
        "x-eventide-key": spec.key,
    }
    if not spec.consumed:
        return
    operations[f"publish{main[:1].upper()}{main[1:]}"] = {
        "action": "send",
        "channel": {"$ref": f"#/channels/{main}"},
        "summary": f"A producer publishes to {topic}, keyed by the {spec.key}.",
    }
    operations[f"project{main[:1].upper()}{main[1:]}"] = {
        "action": "receive",
        "channel": {"$ref": f"#/channels/{main}"},
        "summary": f"Eventide's projections consume {topic} in their consumer group.",
        "bindings": {
            "kafka": {
                "groupId": {"type": "string", "enum": [settings.projection_group]},
                "bindingVersion": KAFKA_BINDING,
            }
        },
    }
    for name, kind, text in (
        (retry_topic(topic), "Retry", "records whose handler failed, waiting to be retried"),
        (dlq_topic(topic), "Dlq", "records given up on, with the reason in their headers"),
    ):
        channels[f"{main}{kind}"] = {
            "address": name,
            "title": name.removeprefix(settings.topic_prefix),
            "description": f"{text} (records of {topic} as they came, same key).",
            "messages": refs,
            "bindings": {"kafka": _channel_binding(settings, name, {})},
        }


def _channel_binding(settings: Settings, topic: str, configs: dict[str, Any]) -> dict[str, Any]:
    binding: dict[str, Any] = {
        "topic": topic,
        "partitions": settings.partitions,
        "replicas": settings.replication_factor,
        "bindingVersion": KAFKA_BINDING,
    }
    if configs:
        binding["topicConfiguration"] = configs
    return binding

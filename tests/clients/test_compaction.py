"""Log compaction (cleanup.policy=compact) seen from real clients: confluent-kafka
produces repeated keys and tombstones to a compacted topic with small segments; once the
broker's cleaner has run, kcat reads exactly the latest value of every live key at the
offset it was produced at, tombstones past delete.retention.ms are gone, and every batch
on disk is CRC-valid with offsets still contiguous (cleaning never moves an offset)."""

import time

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import (AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource,
                                   NewTopic, ResourceType)

from conftest import start_broker_with_config, stop_at_teardown
from strandutil import kcat, stored_batches

T = 30  # seconds for any single admin call
CLEAN_TIMEOUT_S = 60.0


@pytest.fixture
def fast_cleaner_broker(request, tmp_path):
    """A broker whose cleaner looks at compacted partitions every 200 ms."""
    b = start_broker_with_config(request, tmp_path, "log-cleaner-backoff-ms = 200\n")
    yield b
    stop_at_teardown(b)


def create_topic(admin, topic, config):
    fs = admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1,
                                       config=config)],
                             operation_timeout=T, request_timeout=T)
    assert fs[topic].result(timeout=T) is None


def describe(admin, topic):
    res = ConfigResource(ResourceType.TOPIC, topic)
    return admin.describe_configs([res], request_timeout=T)[res].result(timeout=T)


def produce_rounds(bootstrap, topic, rounds, compression="none"):
    """Produces each round (a list of (key, value or None)) as its own flush, so that
    rounds land in different batches and, with small segments, different segments.
    Returns [(offset, key, value)] in produce order."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0,
                         "enable.idempotence": False, "compression.type": compression})
    produced = []
    for records in rounds:
        reports = [None] * len(records)

        def make_cb(i):
            def cb(err, msg):
                reports[i] = (err, msg.offset() if err is None else None)
            return cb

        for i, (key, value) in enumerate(records):
            producer.produce(topic, key=key, value=value, partition=0, on_delivery=make_cb(i))
        assert producer.flush(T) == 0, "messages undelivered"
        for (key, value), (err, offset) in zip(records, reports):
            assert err is None, err
            produced.append((offset, key, value))
    return produced


def latest_live(produced):
    """The model: the latest record of each key, without keys whose latest is a tombstone."""
    latest = {}
    for offset, key, value in produced:
        if key not in latest or latest[key][0] < offset:
            latest[key] = (offset, key, value)
    return sorted(r for r in latest.values() if r[2] is not None)


def read_all(bootstrap, topic):
    """Every record kcat reads from the start, as (offset, key, value or None)."""
    out = kcat(bootstrap, "-C", "-t", topic, "-p", "0", "-o", "beginning", "-e", "-Z",
               "-f", "%o %k %s\\n").stdout.decode()
    records = []
    for line in out.splitlines():
        offset, key, value = line.split(" ", 2)
        records.append((int(offset), key, None if value == "NULL" else value))
    return records


def wait_until_cleaned(bootstrap, topic, expected):
    deadline = time.monotonic() + CLEAN_TIMEOUT_S
    seen = None
    while time.monotonic() < deadline:
        seen = read_all(bootstrap, topic)
        if seen == expected:
            return
        time.sleep(0.5)
    raise AssertionError(f"not cleaned within {CLEAN_TIMEOUT_S}s:\nread     {seen}\n"
                         f"expected {expected}")


def check_disk(partition_dir, produced_count):
    batches = stored_batches(partition_dir, check_crc=True)
    assert batches, "no batches on disk"
    bad = [b for b in batches if not b.crc_ok]
    assert not bad, f"batches failing CRC32C: {bad[:3]}"
    for a, b in zip(batches, batches[1:]):
        assert a.last_offset + 1 == b.base_offset, f"offsets moved: {a} then {b}"
    data = [b for b in batches if not b.is_control]
    assert sum(b.records_count for b in data) < produced_count, "nothing was cleaned away"
    assert any(b.records_count < b.last_offset_delta + 1 for b in data), "no batch was rewritten"
    return data


def test_compacted_topic_keeps_latest_per_key_at_its_offset(fast_cleaner_broker):
    broker = fast_cleaner_broker
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    topic = "compacted"
    create_topic(admin, topic, {"cleanup.policy": "compact", "segment.bytes": "1024",
                                "min.cleanable.dirty.ratio": "0.01",
                                "delete.retention.ms": "1000"})
    configs = describe(admin, topic)
    assert configs["cleanup.policy"].value == "compact"
    assert configs["delete.retention.ms"].value == "1000"
    assert configs["min.cleanable.dirty.ratio"].value == "0.01"
    assert configs["min.compaction.lag.ms"].value == "0"

    keys = [f"k{i}" for i in range(10)]
    rounds = [[(k, f"{k}-v{r}-" + "x" * 40) for k in keys] for r in range(6)]
    rounds.append([(k, None) for k in keys[:3]])  # tombstones
    produced = produce_rounds(broker.bootstrap, topic, rounds, compression="lz4")
    # The tombstones must be older than delete.retention.ms when the clean that covers
    # them runs: that clean needs the segment holding them to be rolled, which only the
    # fillers below do.
    time.sleep(1.5)
    fillers = [[(f"f{i}", f"filler-{i}-" + "y" * 60)] for i in range(30)]
    produced += produce_rounds(broker.bootstrap, topic, fillers)

    expected = latest_live(produced)
    assert not any(k in ("k0", "k1", "k2") for _, k, _ in expected)
    wait_until_cleaned(broker.bootstrap, topic, expected)

    # What is on disk, read with the broker stopped: CRC-valid, offsets in place, codecs kept.
    broker.stop()
    data = check_disk(broker.partition_dir(topic), len(produced))
    assert any(b.codec == 3 and b.records_count > 0 for b in data), "lz4 batches lost their codec"
    # The cleaned log reopens and reads the same.
    broker.start()
    assert read_all(broker.bootstrap, topic) == expected


def test_compact_delete_policy_and_list_edits(fast_cleaner_broker):
    broker = fast_cleaner_broker
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    topic = "compact-delete"
    create_topic(admin, topic, {"cleanup.policy": "delete,compact", "segment.bytes": "1024",
                                "min.cleanable.dirty.ratio": "0.01", "retention.ms": "-1"})
    assert describe(admin, topic)["cleanup.policy"].value == "compact,delete"

    keys = [f"key{i}" for i in range(8)]
    rounds = [[(k, f"{k}-r{r}-" + "z" * 40) for k in keys] for r in range(5)]
    rounds += [[(f"u{i}", f"unique-{i}-" + "w" * 60)] for i in range(20)]
    produced = produce_rounds(broker.bootstrap, topic, rounds, compression="gzip")
    wait_until_cleaned(broker.bootstrap, topic, latest_live(produced))

    # cleanup.policy is a list: SUBTRACT and APPEND edit it.
    res = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
        ConfigEntry("cleanup.policy", "delete",
                    incremental_operation=AlterConfigOpType.SUBTRACT)])
    admin.incremental_alter_configs([res], request_timeout=T)[res].result(timeout=T)
    assert describe(admin, topic)["cleanup.policy"].value == "compact"
    res = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=[
        ConfigEntry("cleanup.policy", "delete",
                    incremental_operation=AlterConfigOpType.APPEND)])
    admin.incremental_alter_configs([res], request_timeout=T)[res].result(timeout=T)
    assert describe(admin, topic)["cleanup.policy"].value == "compact,delete"

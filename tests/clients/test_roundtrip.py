"""Large byte-for-byte round trips with confluent-kafka, and kafka-python's own loop."""

import os

from confluent_kafka import TIMESTAMP_CREATE_TIME

from strandutil import (CODECS, confluent_consume_all, confluent_produce, contiguous,
                        data_batches, kp_consume, kp_produce)

BASE_TS = 1_700_000_000_000  # the topics below keep records forever (retention.ms=-1)


def make_rich_records(n):
    """Keys (some null), values (some empty, some null), headers with duplicate keys and
    a null header value, and explicit, non-monotonic timestamps."""
    records = []
    for i in range(n):
        key = None if i % 7 == 0 else f"key-{i % 1000}".encode()
        if i % 13 == 0:
            value = None
        elif i % 11 == 0:
            value = b""
        else:
            value = f"value-{i}-".encode() + bytes([i % 256, (i * 7) % 256]) * (i % 5)
        headers = [("h", f"first-{i}".encode()), ("other", b"\x00\xff"),
                   ("h", f"second-{i}".encode())]
        if i % 3 == 0:
            headers.append(("null-header", None))
        if i % 17 == 0:
            headers = []
        ts = BASE_TS + i * 3 - (i % 10) * 2  # non-monotonic within a batch
        records.append({"key": key, "value": value, "headers": headers, "timestamp": ts})
    return records


def create_forever_topic(bootstrap, name, partitions=1):
    from confluent_kafka.admin import AdminClient, NewTopic
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(name, num_partitions=partitions,
                                            replication_factor=1,
                                            config={"retention.ms": "-1"})],
                                  operation_timeout=30, request_timeout=30)
    futures[name].result(timeout=30)


def test_confluent_100k_keys_headers_timestamps_byte_for_byte(broker):
    topic = "rich"
    create_forever_topic(broker.bootstrap, topic)
    records = make_rich_records(100_000)
    reports = confluent_produce(broker.bootstrap, topic, records, conf={"acks": "all"})
    base = contiguous(off for _, off in reports)

    messages = confluent_consume_all(broker.bootstrap, topic, len(records), settle_s=1.0)
    for i, (m, r) in enumerate(zip(messages, records)):
        got = (m.offset(), m.key(), m.value(), m.headers() or [], m.timestamp())
        want = (base + i, r["key"], r["value"], r["headers"], (TIMESTAMP_CREATE_TIME, r["timestamp"]))
        assert got == want, f"record {i} differs:\n got  {got}\n want {want}"


def test_confluent_100k_1kib_lz4(broker):
    topic = "big-lz4"
    n = 100_000
    pool = os.urandom(1 << 20)
    # 8-byte sequence, 256 bytes from a random pool, then a repeated pattern: unique values
    # that lz4 shrinks (librdkafka sends a batch uncompressed when compression does not
    # make it smaller, and the codec of every stored batch is checked below).
    def value(i):
        start = (i * 7919) % (len(pool) - 256)
        return (b"%08d" % i + pool[start:start + 256] + b"strand-%06d|" % (i % 977) * 60)[:1024]
    records = [{"value": value(i)} for i in range(n)]
    assert all(len(r["value"]) == 1024 for r in records[:10])
    reports = confluent_produce(broker.bootstrap, topic, records,
                                conf={"acks": "all", "compression.type": "lz4"},
                                timeout_s=240)
    base = contiguous(off for _, off in reports)
    batches = data_batches(broker.partition_dir(topic), check_crc=False)
    assert sum(b.records_count for b in batches) == n
    assert {b.codec for b in batches} == {CODECS["lz4"]}, "stored batches are not all lz4"

    messages = confluent_consume_all(broker.bootstrap, topic, n, timeout_s=240, settle_s=1.0)
    for i, m in enumerate(messages):
        assert m.offset() == base + i, f"message {i} has offset {m.offset()}"
        assert m.value() == records[i]["value"], f"value of offset {i} differs"


def test_kafka_python_roundtrip(broker):
    topic = "kp-roundtrip"
    n = 5000
    records = [{"key": f"k{i}".encode(), "value": f"kafka-python value {i}".encode() * (1 + i % 4),
                "headers": [("seq", str(i).encode()), ("seq", b"again")],
                "timestamp": BASE_TS + i}
               for i in range(n)]
    create_forever_topic(broker.bootstrap, topic)
    metas = kp_produce(broker.bootstrap, topic, records)
    base = contiguous(m.offset for m in metas)
    assert all(m.partition == 0 for m in metas)

    got = kp_consume(broker.bootstrap, topic, n)
    assert len(got) == n, f"consumed {len(got)} of {n}"
    for i, (c, r) in enumerate(zip(got, records)):
        assert (c.offset, c.key, c.value, list(c.headers), c.timestamp) == \
               (base + i, r["key"], r["value"], r["headers"], r["timestamp"]), f"record {i}: {c}"

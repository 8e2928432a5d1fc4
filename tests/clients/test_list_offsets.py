"""ListOffsets by timestamp, and earliest/latest, through both clients.

1000 records with timestamps BASE + 10*i, in small batches over several segments with
a dense time index, so lookups cross batch, index-entry and segment boundaries."""

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from strandutil import confluent_produce, contiguous, data_batches

N = 1000
BASE = 1_600_000_000_000
TOPIC = "times"


def ts(i):
    return BASE + 10 * i


# (target timestamp, expected index of the record found, or None when no record is that
# new); the record with index i sits at offset base + i (base: the first record's offset)
CASES = [
    (0, 0),
    (BASE - 5000, 0),
    (BASE - 1, 0),
    (BASE, 0),
    (BASE + 1, 1),
    (ts(1), 1),
    (ts(24) + 9, 25),
    (ts(25), 25),
    (ts(26) - 1, 26),
    (ts(399), 399),
    (ts(400) - 5, 400),
    (ts(500), 500),
    (ts(500) + 3, 501),
    (ts(777) + 9, 778),
    (ts(998) + 1, 999),
    (ts(999), 999),
    (ts(999) + 1, None),
    (ts(999) + 10_000_000, None),
]


def setup_topic(broker):
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    futures = admin.create_topics([NewTopic(TOPIC, num_partitions=1, replication_factor=1, config={
        "retention.ms": "-1", "segment.bytes": "16384", "index.interval.bytes": "300"})],
        operation_timeout=30, request_timeout=30)
    futures[TOPIC].result(timeout=30)
    records = [{"key": b"k%d" % i, "value": b"v%d" % i, "timestamp": ts(i)} for i in range(N)]
    # ~25 records per batch: ~40 batches spread over several segments.
    reports = confluent_produce(broker.bootstrap, TOPIC, records,
                                conf={"batch.num.messages": 25, "linger.ms": 50})
    base = contiguous(off for _, off in reports)
    batches = data_batches(broker.partition_dir(TOPIC))
    assert len(batches) >= 20, f"only {len(batches)} batches"
    assert len({b.file for b in batches}) >= 2, "expected several segments"
    return base


def test_offsets_for_times_confluent_and_kafka_python(broker):
    base = setup_topic(broker)

    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "times",
                         "enable.auto.commit": False})
    try:
        tp = TopicPartition(TOPIC, 0)
        assert consumer.get_watermark_offsets(tp, timeout=10) == (0, base + N)
        got = []
        for target, _ in CASES:
            [res] = consumer.offsets_for_times([TopicPartition(TOPIC, 0, target)], timeout=10)
            assert res.error is None, f"{target}: {res.error}"
            got.append((target, res.offset))
        want = [(target, -1 if i is None else base + i) for target, i in CASES]
        assert got == want
    finally:
        consumer.close()

    from kafka import KafkaConsumer, TopicPartition as KTP
    kc = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None,
                       enable_auto_commit=False)
    try:
        ktp = KTP(TOPIC, 0)
        assert kc.beginning_offsets([ktp]) == {ktp: 0}
        assert kc.end_offsets([ktp]) == {ktp: base + N}
        got = []
        for target, _ in CASES:
            res = kc.offsets_for_times({ktp: target})[ktp]
            got.append((target, None if res is None else (res.offset, res.timestamp)))
        want = [(target, None if i is None else (base + i, ts(i))) for target, i in CASES]
        assert got == want
    finally:
        kc.close()

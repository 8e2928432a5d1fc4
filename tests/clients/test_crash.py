"""Crashes, corruption and restarts of the real broker process."""

import time

import pytest
from confluent_kafka import KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, ConfigSource, NewTopic, ResourceType

from strandutil import (confluent_consume, confluent_consume_all, confluent_produce,
                        complete_lines, contiguous, data_batches, kcat_partial)

T = 30


def create_topic(bootstrap, name, partitions=1, config=None):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    fs = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1,
                                       config=config or {})],
                             operation_timeout=T, request_timeout=T)
    fs[name].result(timeout=T)


def high_watermark(bootstrap, topic, partition=0):
    from confluent_kafka import Consumer
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "hw", "enable.auto.commit": False})
    try:
        return c.get_watermark_offsets(TopicPartition(topic, partition), timeout=T)
    finally:
        c.close()


def assert_metadata_answers(broker, topic):
    assert broker.is_alive(), f"broker died (exit code {broker.proc.poll()})"
    md = AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=T)
    assert topic in md.topics and md.topics[topic].error is None
    assert list(md.brokers) == [1]


# ---------------------------------------------------------------------------------------
# 9. SIGKILL under acks=all load

def test_sigkill_during_acks_all_load_keeps_every_acked_record(broker):
    topic = "kill-load"
    create_topic(broker.bootstrap, topic, config={"retention.ms": "-1"})
    producer = Producer({
        "bootstrap.servers": broker.bootstrap, "acks": "all",
        "message.send.max.retries": 0,  # the client never sends a record twice
        "enable.idempotence": False, "linger.ms": 2,
        "message.timeout.ms": 10000, "request.timeout.ms": 5000,
        "queue.buffering.max.messages": 20000,
    })
    acked = {}    # seq -> offset reported by the delivery callback
    failed = {}   # seq -> error
    produced = 0

    def on_delivery(err, msg):
        seq = int(msg.value())
        if err is None:
            acked[seq] = msg.offset()
        else:
            failed[seq] = err

    deadline = time.monotonic() + 90
    killed_at = None
    while time.monotonic() < deadline and produced < 2_000_000:
        if killed_at is not None and time.monotonic() - killed_at > 1.0:
            break
        try:
            producer.produce(topic, value=b"%010d" % produced, partition=0,
                             on_delivery=on_delivery)
            produced += 1
        except BufferError:
            producer.poll(0.01)
        if produced % 50 == 0:
            producer.poll(0)
        if killed_at is None and len(acked) >= 3000:
            broker.kill()
            killed_at = time.monotonic()
    assert killed_at is not None, f"only {len(acked)} acks in 90s"
    flush_deadline = time.monotonic() + 60
    while len(producer) > 0 and time.monotonic() < flush_deadline:
        producer.flush(1.0)
    assert len(producer) == 0, f"{len(producer)} records neither delivered nor failed"
    assert len(acked) + len(failed) == produced
    assert failed, "the kill should have failed some records"
    del producer
    print(f"produced {produced}, acked {len(acked)}, failed {len(failed)}")

    broker.start()
    low, high = high_watermark(broker.bootstrap, topic)
    assert low == 0
    print(f"log end after restart: {high}")
    assert high >= len(acked), f"log end {high} < {len(acked)} acknowledged records"
    # Every record below the high watermark, whatever the offsets its control batches
    # (one per leader election: the start and the restart) took.
    stored = sum(b.records_count for b in data_batches(broker.partition_dir(topic))
                 if b.last_offset < high)
    assert stored >= len(acked)
    messages = confluent_consume_all(broker.bootstrap, topic, stored, timeout_s=60, settle_s=1.0)
    offsets = [m.offset() for m in messages]
    assert offsets == sorted(set(offsets)) and offsets[-1] < high, "offsets repeat or go back"
    seqs = [int(m.value()) for m in messages]
    assert all(0 <= s < produced for s in seqs), "a value that was never produced"
    assert len(set(seqs)) == len(seqs), "a value appears twice"
    offset_of = {s: m.offset() for s, m in zip(seqs, messages)}
    lost = sorted(set(acked) - set(offset_of))
    assert not lost, f"{len(lost)} acknowledged records lost after SIGKILL, first {lost[:10]}"
    moved = [(s, acked[s], offset_of[s]) for s in acked if acked[s] != offset_of[s]]
    assert not moved, f"acked records found at other offsets (seq, acked, found): {moved[:10]}"
    acked_by_offset = [s for s in seqs if s in acked]
    assert acked_by_offset == sorted(acked), "acknowledged values out of order"
    # One producer, one connection, no retries: what was written is in send order.
    assert seqs == sorted(seqs), "stored values out of send order"


# ---------------------------------------------------------------------------------------
# 10. A corrupt batch in the middle of a segment

def produce_in_batches(bootstrap, topic, batches, per_batch):
    """Each group of records is sent by one flush: one batch per group on disk."""
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5000,
                         "enable.idempotence": False, "batch.num.messages": 10000})
    originals = {}
    reports = {}

    def cb(err, msg):
        reports[msg.key()] = (err, msg.offset())

    for b in range(batches):
        for r in range(per_batch):
            i = b * per_batch + r
            key = b"k%d" % i
            originals[key] = b"corrupt-test-record-%d-" % i + b"x" * 60
            producer.produce(topic, key=key, value=originals[key], partition=0, on_delivery=cb)
        assert producer.flush(T) == 0
    assert len(reports) == batches * per_batch
    by_offset = {}
    for key, (err, offset) in reports.items():
        assert err is None, f"{key}: {err}"
        by_offset[offset] = (key, originals[key])
    contiguous(sorted(by_offset))
    assert len(by_offset) == batches * per_batch
    return by_offset


@pytest.mark.parametrize("stop", ["sigterm", "sigkill"])
def test_corrupt_batch_is_never_served(broker, stop):
    topic = "corrupt"
    create_topic(broker.bootstrap, topic, config={"retention.ms": "-1"})
    originals = produce_in_batches(broker.bootstrap, topic, batches=30, per_batch=20)
    pdir = broker.partition_dir(topic)

    if stop == "sigterm":
        broker.stop()
    else:
        broker.kill()

    batches = data_batches(pdir)
    assert len(batches) >= 10, f"only {len(batches)} batches on disk"
    assert all(b.crc_ok for b in batches)
    victim = batches[len(batches) // 2]
    flip_at = victim.position + 61 + (victim.size - 61) // 2
    assert victim.position + 21 <= flip_at < victim.position + victim.size
    data = bytearray(victim.file.read_bytes())
    data[flip_at] ^= 0x10
    victim.file.write_bytes(bytes(data))
    bad = range(victim.base_offset, victim.last_offset + 1)
    first = min(originals)
    before = victim.base_offset - first  # records before the corrupt batch

    broker.start()

    def check_delivered(delivered, client):
        """delivered: [(offset, key, value)] in delivery order."""
        offsets = [o for o, _, _ in delivered]
        assert offsets == sorted(set(offsets)), f"{client}: offsets repeat or go back"
        served_bad = [o for o in offsets if o in bad]
        assert not served_bad, (f"{client}: records of the corrupt batch (offsets {bad.start}.."
                                f"{bad.stop - 1}) were delivered: {served_bad[:10]}")
        wrong = [(o, k, v) for o, k, v in delivered if originals.get(o) != (k, v)]
        assert not wrong, f"{client}: delivered records differ from what was produced: {wrong[:3]}"
        assert offsets[:before] == list(range(first, victim.base_offset)), (
            f"{client}: the {before} records before the corrupt batch were not all served")

    messages, errors = confluent_consume(broker.bootstrap, topic, before, timeout_s=30,
                                         settle_s=5.0)
    print(f"corrupt batch: offsets {bad.start}..{bad.stop - 1}; confluent-kafka got "
          f"{len(messages)} records, errors: {[str(e) for e in errors][:5]}")
    check_delivered([(m.offset(), m.key(), m.value()) for m in messages], "confluent-kafka")
    assert_metadata_answers(broker, topic)

    code, out, err = kcat_partial(broker.bootstrap, "-C", "-t", topic, "-p", "0", "-o",
                                  "beginning", "-e", "-f", "%o|%k|%s\\n", timeout_s=12)
    delivered = []
    for line in complete_lines(out):
        o, k, v = line.split(b"|")
        delivered.append((int(o), k, v))
    print(f"kcat: exit {code}, {len(delivered)} records, stderr tail: {err[-500:]!r}")
    check_delivered(delivered, "kcat")
    assert_metadata_answers(broker, topic)


# ---------------------------------------------------------------------------------------
# 11. Restart persistence

def test_restart_persists_topics_configs_and_records(broker):
    topic = "persist"
    create_topic(broker.bootstrap, topic, partitions=2,
                 config={"retention.ms": "86400000", "segment.bytes": "65536"})
    now = int(time.time() * 1000)
    recs = {p: [{"key": b"p%d-%d" % (p, i), "value": b"persisted %d/%d " % (p, i) + b"y" * 40,
                 "headers": [("n", b"%d" % i)], "timestamp": now + i}
                for i in range(n)] for p, n in ((0, 3000), (1, 1000))}
    for p, records in recs.items():
        confluent_produce(broker.bootstrap, topic, records, partition=p)
    confluent_produce(broker.bootstrap, "auto-created", [{"value": b"auto %d" % i}
                                                          for i in range(10)])
    assert len(list(broker.partition_dir(topic, 0).glob("*.log"))) >= 2, "expected a roll"

    def check(extra=()):
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        md = admin.list_topics(timeout=T)
        # Consumers with a group id create the internal __consumer_offsets on the way.
        assert sorted(t for t in md.topics if not t.startswith("__")) == ["auto-created", topic]
        assert sorted(md.topics[topic].partitions) == [0, 1]
        assert sorted(md.topics["auto-created"].partitions) == [0]
        res = ConfigResource(ResourceType.TOPIC, topic)
        configs = admin.describe_configs([res], request_timeout=T)[res].result(timeout=T)
        for name, value in (("retention.ms", "86400000"), ("segment.bytes", "65536")):
            assert (configs[name].value, configs[name].source) == \
                (value, ConfigSource.DYNAMIC_TOPIC_CONFIG.value), name
        for p, records in recs.items():
            all_records = records + (list(extra) if p == 0 else [])
            msgs = confluent_consume_all(broker.bootstrap, topic, len(all_records),
                                         partition=p, settle_s=0.5)
            got = [(m.key(), m.value(), m.headers(), m.timestamp()[1]) for m in msgs]
            want = [(r["key"], r["value"], r.get("headers"), r["timestamp"])
                    for r in all_records]
            assert got == want, f"partition {p} differs after restart"
            offsets = [m.offset() for m in msgs]
            assert offsets == sorted(set(offsets)), f"partition {p}: offsets repeat or go back"
        auto = confluent_consume_all(broker.bootstrap, "auto-created", 10, settle_s=0.5)
        assert [m.value() for m in auto] == [b"auto %d" % i for i in range(10)]

    broker.stop()
    broker.start()
    check()

    # Appends continue at the old log end; an unclean restart keeps acks=all records too.
    extra = [{"key": b"after", "value": b"after restart %d" % i, "headers": [("n", b"x")],
              "timestamp": now + 10_000 + i} for i in range(10)]
    _, high_before = high_watermark(broker.bootstrap, topic)
    reports = confluent_produce(broker.bootstrap, topic, extra, partition=0)
    assert contiguous(off for _, off in reports) >= high_before
    broker.kill()
    broker.start()
    check(extra)

"""acks=0, acks=1 and acks=all: everything produced is there to consume.

On loopback nothing is lost, so even acks=0 must deliver every record: the producer is
flushed (its requests are on the wire) and the consumer then waits, bounded, for all."""

import pytest

from strandutil import confluent_consume_all, confluent_produce, contiguous, kp_consume, kp_produce

N = 5000


def records_for(tag):
    return [{"key": f"{tag}-{i}".encode(), "value": f"{tag} value {i}".encode()}
            for i in range(N)]


@pytest.mark.parametrize("acks", ["0", "1", "all"])
def test_confluent_acks(broker, acks):
    topic = f"acks-cf-{acks}"
    records = records_for(topic)
    reports = confluent_produce(broker.bootstrap, topic, records, conf={"acks": acks})
    messages = confluent_consume_all(broker.bootstrap, topic, N, timeout_s=60, settle_s=0.5)
    base = contiguous(m.offset() for m in messages)
    if acks != "0":
        assert [off for _, off in reports] == list(range(base, base + N))
    assert [(m.key(), m.value()) for m in messages] == [(r["key"], r["value"]) for r in records]


@pytest.mark.parametrize("acks", [0, 1, "all"])
def test_kafka_python_acks(broker, acks):
    topic = f"acks-kp-{acks}"
    records = records_for(topic)
    metas = kp_produce(broker.bootstrap, topic, records, acks=acks)
    got = kp_consume(broker.bootstrap, topic, N, timeout_s=60)
    base = contiguous(c.offset for c in got)
    if acks != 0:
        assert [m.offset for m in metas] == list(range(base, base + N))
    assert [(c.key, c.value) for c in got] == [(r["key"], r["value"]) for r in records]

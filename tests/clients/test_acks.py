"""acks=0, acks=1 and acks=all: everything produced is there to consume.

On loopback nothing is lost, so even acks=0 must deliver every record: the producer is
flushed (its requests are on the wire) and the consumer then waits, bounded, for all."""

import pytest

from strandutil import confluent_consume_all, confluent_produce, kp_consume, kp_produce

N = 5000


def records_for(tag):
    return [{"key": f"{tag}-{i}".encode(), "value": f"{tag} value {i}".encode()}
            for i in range(N)]


@pytest.mark.parametrize("acks", ["0", "1", "all"])
def test_confluent_acks(broker, acks):
    topic = f"acks-cf-{acks}"
    records = records_for(topic)
    reports = confluent_produce(broker.bootstrap, topic, records, conf={"acks": acks})
    if acks != "0":
        assert [off for _, off in reports] == list(range(N))
    messages = confluent_consume_all(broker.bootstrap, topic, N, timeout_s=60, settle_s=0.5)
    assert [(m.offset(), m.key(), m.value()) for m in messages] == \
           [(i, r["key"], r["value"]) for i, r in enumerate(records)]


@pytest.mark.parametrize("acks", [0, 1, "all"])
def test_kafka_python_acks(broker, acks):
    topic = f"acks-kp-{acks}"
    records = records_for(topic)
    metas = kp_produce(broker.bootstrap, topic, records, acks=acks)
    if acks != 0:
        assert [m.offset for m in metas] == list(range(N))
    got = kp_consume(broker.bootstrap, topic, N, timeout_s=60)
    assert [(c.offset, c.key, c.value) for c in got] == \
           [(i, r["key"], r["value"]) for i, r in enumerate(records)]

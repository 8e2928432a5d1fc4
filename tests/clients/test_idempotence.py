"""Idempotent producers (KIP-98 idempotence, KIP-360 recovery) against real strand
processes: librdkafka retries what a dying leader may or may not have written, and the
partition's replicated producer state must turn every retry into the original's offset."""

from confluent_kafka import Producer

from strandutil import confluent_consume_all, stored_batches
from test_cluster import (count_data_records, create_topic, high_watermark,
                          produce_through_leader_kills, wait_for)


def test_idempotent_producer_writes_each_record_once_through_two_leader_kills(cluster):
    topic = "idempotent-failover"
    create_topic(cluster, topic, partitions=1, rf=3, config={"retention.ms": "-1"})
    total = 50_000
    producer = Producer({
        "bootstrap.servers": cluster.bootstrap, "acks": "all",
        "enable.idempotence": True, "max.in.flight.requests.per.connection": 5,
        # Retries are left to librdkafka (unbounded within the message timeout): every
        # batch in flight when a leader dies is sent again to the next one.
        "linger.ms": 5, "message.timeout.ms": 180000, "request.timeout.ms": 10000,
        "queue.buffering.max.messages": 100000, "topic.metadata.refresh.interval.ms": 1000,
    })
    # SIGKILL the leader after 15,000 and after 35,000 acknowledgements, with batches in
    # flight; each victim restarts once a new leader took over.
    acked, failed, kills, seq = produce_through_leader_kills(
        cluster, producer, topic, total, (15_000, 35_000), in_flight=5000, timeout_s=300)
    producer.flush(120)
    assert len(kills) == 2, f"only {len(kills)} kills; acked {len(acked)} of {seq} sent"
    assert not failed, f"{len(failed)} records failed, first {list(failed.items())[:3]}"
    assert len(acked) == total, f"{total - len(acked)} records neither delivered nor failed"

    high = wait_for(lambda: high_watermark(cluster, topic), "a high watermark")
    stored = count_data_records(cluster, topic, high)
    assert stored == total, f"{stored} records stored for {total} produced: duplicates or losses"
    messages = confluent_consume_all(cluster.bootstrap, topic, stored, timeout_s=120,
                                     settle_s=1.0)
    seqs = [int(m.value()) for m in messages]
    offsets = [m.offset() for m in messages]
    # Exactly once, in order: the idempotent producer's ordering guarantee.
    assert seqs == list(range(total)), \
        f"records repeat or reorder: first difference at {next(i for i, (a, b) in enumerate(zip(seqs, range(total))) if a != b) if seqs[:total] != list(range(min(len(seqs), total))) else len(seqs)}"
    moved = [(s, acked[s], o) for s, o in zip(seqs, offsets) if acked[s] != o]
    assert not moved, f"records at other offsets than acknowledged (seq, acked, found): {moved[:5]}"

    # Every replica holds the same batches, all from one producer id, with sequence
    # numbers that follow each other across both leader changes.
    for node_id in (1, 2, 3):
        data = [b for b in stored_batches(cluster[node_id].partition_dir(topic))
                if not b.is_control and b.base_offset < high]
        assert {b.producer_id for b in data} == {data[0].producer_id} and data[0].producer_id >= 0
        next_sequence = 0
        for b in data:
            assert b.base_sequence == next_sequence, \
                f"broker {node_id}: batch at {b.base_offset} has sequence {b.base_sequence}, expected {next_sequence}"
            next_sequence += b.last_offset - b.base_offset + 1
        assert next_sequence == total

"""Transactions (KIP-98, KIP-890) against real strand processes, driven by
confluent-kafka's transactional producer: commits and aborts seen through read_committed
and read_uncommitted consumers, and zombie fencing by a second producer of the same
transactional id."""

import time

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from test_cluster import create_topic, current_leader, wait_for


def transactional_producer(bootstrap, transactional_id, **conf):
    return Producer({
        "bootstrap.servers": bootstrap, "transactional.id": transactional_id,
        "transaction.timeout.ms": 60000, "linger.ms": 5, **conf,
    })


def read_all(bootstrap, topic, isolation, expected_at_least=0, timeout_s=30.0, partition=0):
    """Values of `topic`-`partition` from offset 0 as a consumer with `isolation` sees them."""
    return [value for _, value in read_records(bootstrap, topic, isolation, expected_at_least,
                                               partition, timeout_s)]


def read_records(bootstrap, topic, isolation, expected_at_least=0, partition=0, timeout_s=30.0):
    """(key, value) pairs of `topic`-`partition` from offset 0 as a consumer with
    `isolation` sees them."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": f"reader-{isolation}-{time.monotonic()}",
        "isolation.level": isolation, "enable.auto.commit": False,
    })
    consumer.assign([TopicPartition(topic, partition, 0)])
    values = []
    deadline = time.monotonic() + timeout_s
    quiet_since = None
    while time.monotonic() < deadline:
        m = consumer.poll(0.2)
        if m is None:
            if len(values) >= expected_at_least:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since > 2.0:
                    break
            continue
        quiet_since = None
        if m.error():
            if m.error().code() != KafkaError._PARTITION_EOF:
                raise KafkaException(m.error())
            continue
        values.append((m.key().decode() if m.key() is not None else None, m.value().decode()))
    consumer.close()
    return values


def test_committed_transactions_are_read_and_aborted_ones_only_uncommitted(broker):
    producer = transactional_producer(broker.bootstrap, "txn-commit-abort")
    producer.init_transactions(30)
    producer.begin_transaction()
    for i in range(100):
        producer.produce("txn-basic", value=b"committed-%03d" % i, partition=0)
    producer.commit_transaction(30)
    producer.begin_transaction()
    for i in range(50):
        producer.produce("txn-basic", value=b"aborted-%03d" % i, partition=0)
    producer.flush(30)  # the aborted records are in the log before the abort
    producer.abort_transaction(30)
    producer.begin_transaction()
    for i in range(20):
        producer.produce("txn-basic", value=b"later-%03d" % i, partition=0)
    producer.commit_transaction(30)

    committed = read_all(broker.bootstrap, "txn-basic", "read_committed", 120)
    assert committed == [f"committed-{i:03d}" for i in range(100)] + \
        [f"later-{i:03d}" for i in range(20)]
    uncommitted = read_all(broker.bootstrap, "txn-basic", "read_uncommitted", 170)
    assert uncommitted == [f"committed-{i:03d}" for i in range(100)] + \
        [f"aborted-{i:03d}" for i in range(50)] + [f"later-{i:03d}" for i in range(20)]


def test_an_open_transaction_holds_read_committed_back(broker):
    producer = transactional_producer(broker.bootstrap, "txn-open")
    producer.init_transactions(30)
    producer.begin_transaction()
    for i in range(10):
        producer.produce("txn-open", value=b"first-%d" % i, partition=0)
    producer.commit_transaction(30)
    producer.begin_transaction()
    for i in range(10):
        producer.produce("txn-open", value=b"open-%d" % i, partition=0)
    producer.flush(30)
    # The second transaction is open: read_committed stops before it (the last stable
    # offset), read_uncommitted reads it.
    assert read_all(broker.bootstrap, "txn-open", "read_committed", 10, timeout_s=8) == \
        [f"first-{i}" for i in range(10)]
    assert len(read_all(broker.bootstrap, "txn-open", "read_uncommitted", 20)) == 20
    producer.commit_transaction(30)
    assert read_all(broker.bootstrap, "txn-open", "read_committed", 20) == \
        [f"first-{i}" for i in range(10)] + [f"open-{i}" for i in range(10)]


def test_a_second_producer_of_the_same_transactional_id_fences_the_first(broker):
    zombie = transactional_producer(broker.bootstrap, "txn-fenced")
    zombie.init_transactions(30)
    zombie.begin_transaction()
    for i in range(10):
        zombie.produce("txn-fence", value=b"zombie-%d" % i, partition=0)
    zombie.flush(30)

    # The new producer's InitProducerId aborts the zombie's open transaction and bumps
    # the epoch.
    successor = transactional_producer(broker.bootstrap, "txn-fenced")
    successor.init_transactions(60)
    successor.begin_transaction()
    for i in range(10):
        successor.produce("txn-fence", value=b"successor-%d" % i, partition=0)
    successor.commit_transaction(30)

    # The zombie's later writes and its commit fail as fenced; nothing of it is visible.
    with pytest.raises(KafkaException) as failed:
        zombie.produce("txn-fence", value=b"zombie-late", partition=0)
        zombie.commit_transaction(30)
    error = failed.value.args[0]
    assert error.fatal() or error.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED,
                                             KafkaError.INVALID_PRODUCER_EPOCH), error
    assert error.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED,
                            KafkaError.INVALID_PRODUCER_EPOCH), error

    committed = read_all(broker.bootstrap, "txn-fence", "read_committed", 10)
    assert committed == [f"successor-{i}" for i in range(10)]
    uncommitted = read_all(broker.bootstrap, "txn-fence", "read_uncommitted", 20)
    assert "zombie-late" not in uncommitted


def test_consume_transform_produce_commits_offsets_in_the_transaction(broker):
    """A consume-transform-produce loop: each transaction writes the transformed
    records and commits the consumer's positions with `send_offsets_to_transaction`
    (TxnOffsetCommit). One transaction is aborted midway and its input consumed again
    from the committed offsets; the output holds each input record exactly once and the
    group's committed offset ends at the end of the input."""
    records, per_txn, abort_at_txn = 200, 20, 4
    plain = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(records):
        plain.produce("ctp-input", value=b"in-%03d" % i, partition=0)
    plain.flush(30)

    consumer = Consumer({
        "bootstrap.servers": broker.bootstrap, "group.id": "ctp-group",
        "enable.auto.commit": False, "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
    })
    consumer.subscribe(["ctp-input"])
    producer = transactional_producer(broker.bootstrap, "ctp-app")
    producer.init_transactions(30)

    done, transactions, aborted = 0, 0, False
    producer.begin_transaction()
    in_txn = 0
    deadline = time.monotonic() + 120
    while done < records:
        assert time.monotonic() < deadline, f"only {done} of {records} records processed"
        m = consumer.poll(0.5)
        if m is None:
            continue
        if m.error():
            if m.error().code() != KafkaError._PARTITION_EOF:
                raise KafkaException(m.error())
            continue
        producer.produce("ctp-output", value=b"out-" + m.value(), partition=0)
        in_txn += 1
        if in_txn < per_txn:
            continue
        producer.send_offsets_to_transaction(
            consumer.position(consumer.assignment()), consumer.consumer_group_metadata(), 30)
        if transactions == abort_at_txn and not aborted:
            aborted = True
            producer.flush(30)  # its output is in the log (aborted), not purged unsent
            producer.abort_transaction(30)
            # Back to what the group committed (the aborted offsets never show).
            committed = consumer.committed(consumer.assignment(), 30)
            assert [tp.offset for tp in committed] == [position_after_commit]
            for tp in committed:
                consumer.seek(tp)
        else:
            producer.commit_transaction(30)
            transactions += 1
            done += in_txn
            position_after_commit = consumer.position(consumer.assignment())[0].offset
        in_txn = 0
        producer.begin_transaction()
    producer.abort_transaction(30)  # the last, empty one

    committed = consumer.committed([TopicPartition("ctp-input", 0)], 30)
    _, input_end = consumer.get_watermark_offsets(TopicPartition("ctp-input", 0), 10)
    consumer.close()
    assert aborted
    assert committed[0].offset == input_end
    output = read_all(broker.bootstrap, "ctp-output", "read_committed", records)
    assert output == [f"out-in-{i:03d}" for i in range(records)]
    assert len(read_all(broker.bootstrap, "ctp-output", "read_uncommitted", records + per_txn)) \
        == records + per_txn


def coordinator_partition(key: str, partitions: int = 50) -> int:
    """The `__transaction_state` (or `__consumer_offsets`) partition of `key`: Kafka's
    `Utils.abs(key.hashCode()) % partitions`, with Java's String.hashCode."""
    h = 0
    data = key.encode("utf-16-be")
    for i in range(0, len(data), 2):
        h = (31 * h + int.from_bytes(data[i:i + 2], "big")) & 0xFFFFFFFF
    if h >= 1 << 31:
        h -= 1 << 32
    return (0 if h == -(1 << 31) else abs(h)) % partitions


def test_consume_transform_produce_is_exactly_once_over_three_brokers_with_kills(cluster):
    """Must-show 2 of issue 8: the consume-transform-produce loop of a Kafka Streams-like
    application over three brokers (every topic RF=3), with SIGKILLs of the leader of an
    output partition and of the transaction coordinator while transactions are open.
    The application follows confluent-kafka's documented recovery: a retriable error
    retries, an abortable one aborts and rewinds the consumer to the group's committed
    offsets, a fatal one (fenced) starts a new producer of the same transactional id.
    A read_committed reader of the output then sees each input record transformed exactly
    once, in order per partition, and none of the records of an aborted transaction; a
    read_uncommitted reader also sees the records of the transaction aborted on purpose."""
    partitions, per_partition, per_txn = 2, 1500, 30
    total = partitions * per_partition
    create_topic(cluster, "eos-input", partitions=partitions, rf=3)
    create_topic(cluster, "eos-output", partitions=partitions, rf=3)
    plain = Producer({"bootstrap.servers": cluster.bootstrap, "enable.idempotence": True})
    for p in range(partitions):
        for i in range(per_partition):
            plain.produce("eos-input", value=b"in-%d-%04d" % (p, i), partition=p)
    assert plain.flush(60) == 0

    txn_id, group = "eos-pipeline", "eos-pipeline-group"
    consumer = Consumer({
        "bootstrap.servers": cluster.bootstrap, "group.id": group,
        "enable.auto.commit": False, "auto.offset.reset": "earliest",
        "isolation.level": "read_committed", "session.timeout.ms": 10000,
        "topic.metadata.refresh.interval.ms": 1000,
    })
    reassigned = []
    consumer.subscribe(["eos-input"], on_assign=lambda c, tps: reassigned.append(len(tps)))

    def new_producer():
        p = transactional_producer(cluster.bootstrap, txn_id, **{
            "transaction.timeout.ms": 60000, "message.timeout.ms": 55000,
            "request.timeout.ms": 10000, "topic.metadata.refresh.interval.ms": 1000})
        p.init_transactions(60)
        return p

    def rewind():
        """Back to the group's committed offsets (earliest where none is committed)."""
        committed = wait_for(lambda: consumer.committed(consumer.assignment(), 10),
                             "the group's committed offsets", timeout_s=90)
        for tp in committed:
            if tp.offset < 0:
                tp.offset = 0
            consumer.seek(tp)

    def retrying(what, call, attempts=20):
        for attempt in range(attempts):
            try:
                return call()
            except KafkaException as e:
                if not e.args[0].retriable() or attempt == attempts - 1:
                    raise
                print(f"{what}: retriable {e.args[0]}; again")
                time.sleep(0.5)

    producer = new_producer()
    attempt, committed_attempts, aborted_attempts = 0, set(), set()
    unknown_attempts, fatal_errors, abortable_errors = set(), [], []
    done = {p: 0 for p in range(partitions)}  # input offsets covered by committed txns
    purposely_aborted = None
    kills = []
    coordinator = coordinator_partition(txn_id)
    deadline = time.monotonic() + 400
    while sum(done.values()) < total:
        assert time.monotonic() < deadline, f"only {done} of {total} records processed"
        # SIGKILL, while a transaction is open with records in flight: first the leader
        # of output partition 0, then the transaction coordinator; each restarts once
        # its partition has a new leader.
        attempt += 1
        reassigned.clear()
        try:
            producer.begin_transaction()
            consumed = 0
            positions = {}
            while consumed < per_txn:
                m = consumer.poll(0.5)
                if m is None:
                    if sum(done.values()) + consumed >= total:
                        break
                    continue
                if m.error():
                    if m.error().code() != KafkaError._PARTITION_EOF:
                        raise KafkaException(m.error())
                    continue
                producer.produce("eos-output", key=b"%d" % attempt,
                                 value=b"out-" + m.value(), partition=m.partition())
                positions[m.partition()] = m.offset() + 1
                consumed += 1
                progress = sum(done.values())
                if (len(kills) == 0 and progress >= total // 3) or \
                        (len(kills) == 1 and progress >= 2 * total // 3):
                    if kills:
                        victim = current_leader(cluster, "__transaction_state", coordinator)
                        topic, partition = "__transaction_state", coordinator
                    else:
                        victim = current_leader(cluster, "eos-output", 0)
                        topic, partition = "eos-output", 0
                    producer.flush(0.2)
                    cluster[victim].kill()
                    kills.append((victim, topic, partition))
                    current_leader(cluster, topic, partition, not_in=(victim,))
                    cluster[victim].start()
            if consumed == 0:
                producer.abort_transaction(30)
                continue
            if reassigned:
                # The group rebalanced during the transaction: the consumer went back to
                # the committed offsets, so the records produced so far must not commit.
                raise KafkaException(KafkaError(KafkaError._TRANSPORT, "rebalanced",
                                                txn_requires_abort=True))
            producer.send_offsets_to_transaction(
                consumer.position(consumer.assignment()), consumer.consumer_group_metadata(),
                60)
            if purposely_aborted is None and sum(done.values()) >= total // 2:
                purposely_aborted = attempt
                assert producer.flush(60) == 0  # its records are in the log, then aborted
                raise KafkaException(KafkaError(KafkaError._TRANSPORT, "abort on purpose",
                                                txn_requires_abort=True))
            retrying("commit", lambda: producer.commit_transaction(60))
            committed_attempts.add(attempt)
            for p, end in positions.items():
                done[p] = end
        except KafkaException as e:
            error = e.args[0]
            if error.txn_requires_abort():
                if attempt != purposely_aborted and error.str() != "rebalanced":
                    abortable_errors.append(str(error))
                retrying("abort", lambda: producer.abort_transaction(60))
                aborted_attempts.add(attempt)
                rewind()
            elif error.fatal() or error.code() in (KafkaError._FENCED,
                                                  KafkaError.PRODUCER_FENCED):
                # A fatal error: this producer is done; its transaction's outcome is
                # whatever the next producer's InitProducerId decides.
                fatal_errors.append(str(error))
                assert len(fatal_errors) <= 3, f"fatal errors: {fatal_errors}"
                unknown_attempts.add(attempt)
                producer = new_producer()
                rewind()
            else:
                raise
    committed = consumer.committed([TopicPartition("eos-input", p) for p in range(partitions)], 30)
    consumer_watermarks = [consumer.get_watermark_offsets(TopicPartition("eos-input", p), 10)
                           for p in range(partitions)]
    consumer.close()
    print(f"kills {kills}; attempts {attempt}: committed {len(committed_attempts)}, "
          f"aborted {len(aborted_attempts)} (abortable errors {abortable_errors}), "
          f"unknown {len(unknown_attempts)} (fatal errors {fatal_errors})")
    assert len(kills) == 2 and purposely_aborted is not None
    # The group's offsets are those of the last committed transaction: past the last
    # input record (the log's end may be further, past control batches the replication
    # layer writes at leader changes).
    assert [tp.offset for tp in committed] == [done[p] for p in range(partitions)]
    assert all(done[p] <= consumer_watermarks[p][1] for p in range(partitions))

    for p in range(partitions):
        seen = read_records(cluster.bootstrap, "eos-output", "read_committed", per_partition, p)
        values = [v for _, v in seen]
        duplicates = len(values) - len(set(values))
        assert values == [f"out-in-{p}-{i:04d}" for i in range(per_partition)], \
            f"partition {p}: {len(values)} records, {duplicates} repeated, first wrong at " \
            f"{next((i for i, v in enumerate(values) if v != f'out-in-{p}-{i:04d}'), None)}"
        keys = {int(k) for k, _ in seen}
        assert not keys & aborted_attempts, \
            f"read_committed sees aborted transactions {sorted(keys & aborted_attempts)}"
        assert keys <= committed_attempts | unknown_attempts
    uncommitted = [int(k) for p in range(partitions) for k, _ in read_records(
        cluster.bootstrap, "eos-output", "read_uncommitted", per_partition, p)]
    assert purposely_aborted in uncommitted, "read_uncommitted misses the aborted records"


def test_kafka_python_admin_lists_and_describes_transactions_and_producers(broker):
    """KIP-664's admin APIs as kafka-python's KafkaAdminClient drives them:
    ListTransactions (with state, producer id and duration filters), DescribeTransactions
    and DescribeProducers, during a confluent-kafka transaction and after its commit."""
    from kafka import TopicPartition as KTopicPartition
    from kafka.admin import KafkaAdminClient
    from kafka.errors import KafkaError as KafkaPythonError
    from kafka.errors import TransactionalIdNotFoundError

    topic = "txn-admin"
    producer = transactional_producer(broker.bootstrap, "txn-admin-app")
    producer.init_transactions(30)
    producer.begin_transaction()
    for i in range(5):
        producer.produce(topic, value=b"v-%d" % i, partition=0)
    producer.flush(30)

    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=30000)
    try:
        [listings] = admin.list_transactions().values()
        assert [(t.transactional_id, str(t.state.value)) for t in listings] == \
            [("txn-admin-app", "Ongoing")]
        producer_id = listings[0].producer_id
        [ongoing] = admin.list_transactions(state_filters=["Ongoing"]).values()
        assert [t.transactional_id for t in ongoing] == ["txn-admin-app"]
        [by_id] = admin.list_transactions(producer_id_filters=[producer_id]).values()
        assert len(by_id) == 1
        [none] = admin.list_transactions(state_filters=["CompleteAbort"]).values()
        assert none == []
        [young] = admin.list_transactions(duration_filter_ms=3_600_000).values()
        assert young == []
        # KIP-1152 (ListTransactions v2): the pattern matches whole transactional ids.
        [matching] = admin.list_transactions(transactional_id_pattern="txn-adm.*").values()
        assert [t.transactional_id for t in matching] == ["txn-admin-app"]
        [prefix_only] = admin.list_transactions(transactional_id_pattern="txn-adm").values()
        assert prefix_only == []
        with pytest.raises(KafkaPythonError) as invalid:
            admin.list_transactions(transactional_id_pattern="txn-(")
        assert invalid.value.errno == 128, "INVALID_REGULAR_EXPRESSION"

        described = admin.describe_transactions(["txn-admin-app"])["txn-admin-app"]
        assert str(described.state.value) == "Ongoing"
        assert described.producer_id == producer_id
        assert described.transaction_timeout_ms == 60000
        assert described.topic_partitions == {KTopicPartition(topic, 0)}
        with pytest.raises(TransactionalIdNotFoundError):
            admin.describe_transactions(["no-such-transaction"])

        tp = KTopicPartition(topic, 0)
        [active] = admin.describe_producers([tp])[tp].active_producers
        assert active.producer_id == producer_id
        assert active.last_sequence == 4
        assert active.current_transaction_start_offset >= 0

        producer.commit_transaction(30)
        wait_for(lambda: str(admin.describe_transactions(["txn-admin-app"])["txn-admin-app"]
                             .state.value) == "CompleteCommit", "the commit to complete")
        [active] = admin.describe_producers([tp])[tp].active_producers
        assert active.current_transaction_start_offset == -1
        assert active.coordinator_epoch >= 0
    finally:
        admin.close()


def describe_features(bootstrap):
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30000)
    try:
        return admin.describe_features()
    finally:
        admin.close()


def test_kafka_python_sees_transaction_version_2_finalized_by_default(broker):
    """The feature Kafka 4 clients read before they use transaction version 2 (KIP-890
    part 2), as kafka-python's KafkaAdminClient decodes ApiVersions v3+."""
    features = describe_features(broker.bootstrap)
    assert features == {"transaction.version": {
        "supported": (0, 2), "finalized": (2, 2), "finalized_epoch": 1}}


def test_transaction_version_1_is_finalized_when_configured(tmp_path, request):
    """`transaction-version = 1` keeps clients on transaction version 1; confluent-kafka
    (version 1 always) still commits."""
    from conftest import start_broker_with_config, stop_at_teardown

    b = start_broker_with_config(request, tmp_path, "transaction-version = 1\n")
    try:
        features = describe_features(b.bootstrap)
        assert features["transaction.version"]["finalized"] == (1, 1)
        producer = transactional_producer(b.bootstrap, "tv1-app")
        producer.init_transactions(30)
        producer.begin_transaction()
        producer.produce("tv1", value=b"committed", partition=0)
        producer.commit_transaction(30)
        assert read_all(b.bootstrap, "tv1", "read_committed", 1) == ["committed"]
    finally:
        stop_at_teardown(b)


def test_a_broker_that_is_not_the_coordinator_or_the_leader_says_so(cluster):
    """DescribeTransactions asked of a broker that is not the transactional id's
    coordinator (NOT_COORDINATOR), and DescribeProducers asked of one that does not lead
    the partition (NOT_LEADER_OR_FOLLOWER)."""
    from kafka import TopicPartition as KTopicPartition
    from kafka.admin import KafkaAdminClient
    from kafka.errors import NotLeaderForPartitionError
    from kafka.protocol.admin.transactions import DescribeTransactionsRequest

    topic = "txn-admin-rf3"
    producer = transactional_producer(cluster.bootstrap, "txn-admin-cluster")
    producer.init_transactions(30)
    admin = KafkaAdminClient(bootstrap_servers=cluster.bootstrap, request_timeout_ms=30000)
    try:
        described = admin.describe_transactions(["txn-admin-cluster"])["txn-admin-cluster"]
        assert str(described.state.value) == "Empty"
        others = [i for i in (1, 2, 3) if i != described.coordinator_id]

        async def describe_at(node_id):
            request = DescribeTransactionsRequest(transactional_ids=["txn-admin-cluster"])
            return await admin._manager.send(request, node_id=node_id)

        for node_id in others:
            response = admin._manager.run(describe_at, node_id)
            assert [t.error_code for t in response.transaction_states] == \
                [KafkaError.NOT_COORDINATOR]

        admin.create_topics({topic: {"num_partitions": 1, "replication_factor": 3}})
        tp = KTopicPartition(topic, 0)

        def leader():
            [desc] = admin.describe_topics([topic])
            leaders = [p.get("leader_id", p.get("leader", -1)) for p in desc["partitions"]]
            return leaders[0] if leaders and leaders[0] >= 0 else None

        lead = wait_for(leader, "a leader")
        wait_for(lambda: admin.describe_producers([tp], broker_id=lead) is not None, "the leader")
        follower = next(i for i in (1, 2, 3) if i != lead)
        with pytest.raises(NotLeaderForPartitionError):
            admin.describe_producers([tp], broker_id=follower)
    finally:
        admin.close()

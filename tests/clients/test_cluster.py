"""Three real strand processes replicating through Raft, driven by real Kafka clients.

Every test gets a fresh three-broker cluster (conftest.py `cluster`): node ids 1..3 on
loopback, every partition a Raft group of its replicas, metadata a Raft group of all
three. Leader kills are SIGKILL (no clean shutdown); restarts reuse the data directory
unless the test wipes it."""

import re
import shutil
import signal
import threading
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from strandutil import confluent_consume_all, kcat, stored_batches

T = 30


def admin(cluster, bootstrap=None):
    return AdminClient({"bootstrap.servers": bootstrap or cluster.bootstrap})


def create_topic(cluster, name, partitions=1, rf=3, config=None):
    client = admin(cluster)  # kept alive until the result is in
    fs = client.create_topics(
        [NewTopic(name, num_partitions=partitions, replication_factor=rf, config=config or {})],
        operation_timeout=T, request_timeout=T)
    fs[name].result(timeout=T)


def partitions_of(cluster, topic, bootstrap=None):
    """{partition: (leader, replicas, isrs)} as the cluster's Metadata reports it."""
    md = admin(cluster, bootstrap).list_topics(topic=topic, timeout=T)
    return {p.id: (p.leader, list(p.replicas), list(p.isrs))
            for p in md.topics[topic].partitions.values()}


def wait_for(check, what, timeout_s=60.0):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except Exception as e:  # a broker may be briefly unreachable: keep asking
            last = e
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def current_leader(cluster, topic, partition=0, not_in=()):
    def find():
        leader, _, _ = partitions_of(cluster, topic)[partition]
        return leader if leader > 0 and leader not in not_in else None
    return wait_for(find, f"a leader of {topic}-{partition} other than {list(not_in)}")


def produce_through_leader_kills(cluster, producer, topic, total, kill_after, in_flight,
                                 timeout_s):
    """Produces `total` records (values: their sequence numbers, 10 digits) to
    `topic`-0 with at most `in_flight` unanswered, SIGKILLing the partition's leader once
    the acknowledgements reach each count of `kill_after`; each victim restarts (same
    data dir) once a new leader took over. Returns (acked {seq: offset}, failed {seq:
    error}, the victims' node ids, records sent)."""
    acked, failed = {}, {}

    def on_delivery(err, msg):
        seq = int(msg.value())
        if err is None:
            acked[seq] = msg.offset()
        else:
            failed[seq] = err

    kills = []
    seq = 0
    deadline = time.monotonic() + timeout_s
    while len(acked) + len(failed) < total and time.monotonic() < deadline:
        while seq < total and seq - len(acked) - len(failed) < in_flight:
            try:
                producer.produce(topic, value=b"%010d" % seq, partition=0,
                                 on_delivery=on_delivery)
                seq += 1
            except BufferError:
                break
        producer.poll(0.01)
        if len(kills) < len(kill_after) and len(acked) >= kill_after[len(kills)]:
            victim = current_leader(cluster, topic)
            cluster[victim].kill()
            kills.append(victim)
            current_leader(cluster, topic, not_in=(victim,))
            cluster[victim].start()
    return acked, failed, kills, seq


# ---------------------------------------------------------------------------------------
# 1. kcat sees three brokers and a replicated topic with spread leaders

def test_kcat_lists_three_brokers_and_rf3_leaders_spread(cluster):
    create_topic(cluster, "spread", partitions=6, rf=3)
    out = kcat(cluster.bootstrap, "-L", "-t", "spread").stdout.decode()
    assert re.search(r"^ 3 brokers:$", out, re.M), out
    for node_id, b in cluster.brokers.items():
        assert re.search(rf"^  broker {node_id} at 127\.0\.0\.1:{b.port}\b", out, re.M), out
    rows = re.findall(r"partition (\d+), leader (-?\d+), replicas: ([\d,]+), isrs: ([\d,]+)", out)
    assert len(rows) == 6, out
    leaders = [int(leader) for _, leader, _, _ in rows]
    for _, leader, replicas, isrs in rows:
        replicas = [int(r) for r in replicas.split(",")]
        assert sorted(replicas) == [1, 2, 3], out
        assert int(leader) in replicas, out
    # Six partitions over three brokers: each broker leads two.
    assert sorted(leaders) == [1, 1, 2, 2, 3, 3], out


# ---------------------------------------------------------------------------------------
# 2. acks=all under two leader kills

def test_acks_all_survives_two_leader_kills(cluster):
    topic = "failover"
    create_topic(cluster, topic, partitions=1, rf=3, config={"retention.ms": "-1"})
    total = 50_000
    producer = Producer({
        "bootstrap.servers": cluster.bootstrap, "acks": "all",
        # No client retries: a record is in the log at most once, so "exactly once"
        # below is about the broker, not about librdkafka's resends.
        "message.send.max.retries": 0, "enable.idempotence": False,
        "linger.ms": 5, "message.timeout.ms": 20000, "request.timeout.ms": 10000,
        "queue.buffering.max.messages": 100000, "topic.metadata.refresh.interval.ms": 1000,
    })
    # Kill the current leader after 15,000 and after 35,000 acknowledgements; each victim
    # is restarted (same data dir) once a new leader took over.
    acked, failed, kills, seq = produce_through_leader_kills(
        cluster, producer, topic, total, (15_000, 35_000), in_flight=2000, timeout_s=240)
    producer.flush(60)
    assert len(kills) == 2, f"only {len(kills)} kills; acked {len(acked)} of {seq} sent"
    assert len(acked) + len(failed) == total, \
        f"{total - len(acked) - len(failed)} records neither delivered nor failed"
    print(f"kills {kills}: acked {len(acked)}, failed {len(failed)} "
          f"(first errors: {list(failed.values())[:3]})")
    assert len(acked) >= total * 0.9, f"only {len(acked)} of {total} acknowledged"

    # Read everything back through the cluster.
    md_high = wait_for(lambda: high_watermark(cluster, topic), "a high watermark")
    stored = count_data_records(cluster, topic, md_high)
    messages = confluent_consume_all(cluster.bootstrap, topic, stored, timeout_s=120,
                                     settle_s=1.0)
    offsets = [m.offset() for m in messages]
    seqs = [int(m.value()) for m in messages]
    assert offsets == sorted(set(offsets)), "offsets repeat or go back"
    assert len(set(seqs)) == len(seqs), "a record appears twice"
    assert all(0 <= s < total for s in seqs), "a record nobody produced"
    offset_of = dict(zip(seqs, offsets))
    lost = sorted(set(acked) - set(offset_of))
    assert not lost, f"{len(lost)} acknowledged records lost, first {lost[:10]}"
    moved = [(s, acked[s], offset_of[s]) for s in acked if acked[s] != offset_of[s]]
    assert not moved, f"acknowledged records at other offsets (seq, acked, found): {moved[:5]}"
    acked_in_log_order = [s for s in seqs if s in acked]
    assert acked_in_log_order == sorted(acked), "acknowledged records out of order"

    # Gaps in the offsets are only control batches (each new leader's LEADER_CHANGE).
    for node_id in (1, 2, 3):
        batches = [b for b in stored_batches(cluster[node_id].partition_dir(topic))
                   if b.base_offset < md_high]
        assert [b.base_offset for b in batches] == \
            [0] + [b.last_offset + 1 for b in batches[:-1]], f"broker {node_id}: batches not contiguous"
        data_offsets = [o for b in batches if not b.is_control
                        for o in range(b.base_offset, b.last_offset + 1)]
        assert data_offsets == offsets, f"broker {node_id}: stored records differ from consumed"
        controls = sum(1 for b in batches if b.is_control)
        assert controls >= 3, f"broker {node_id}: {controls} leader changes recorded"


def high_watermark(cluster, topic, partition=0):
    c = Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": "hw"})
    try:
        return c.get_watermark_offsets(TopicPartition(topic, partition), timeout=T)[1]
    finally:
        c.close()


def count_data_records(cluster, topic, below):
    """Records (not control batches) below `below` on the broker that leads the topic."""
    leader = current_leader(cluster, topic)
    return sum(b.records_count for b in stored_batches(cluster[leader].partition_dir(topic))
               if not b.is_control and b.last_offset < below)


# ---------------------------------------------------------------------------------------
# 3. A wiped broker catches up; a paused broker comes back quietly

def replica_logs_agree(cluster, topic, below):
    views = {}
    for node_id in (1, 2, 3):
        batches = stored_batches(cluster[node_id].partition_dir(topic), check_crc=False)
        views[node_id] = [(b.base_offset, b.crc) for b in batches if b.base_offset < below]
    first = views[1]
    return all(v == first for v in views.values()) and first


def listed_brokers(cluster):
    return sorted(admin(cluster).list_topics(timeout=T).brokers)


def produce_n(cluster, topic, n, tag):
    reports = []
    p = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all", "linger.ms": 5,
                  "enable.idempotence": False})
    for i in range(n):
        p.produce(topic, value=b"%s-%d" % (tag, i), partition=0,
                  on_delivery=lambda err, msg: reports.append(err))
    assert p.flush(60) == 0
    assert reports == [None] * n, [e for e in reports if e][:3]


def test_wiped_broker_rejoins_and_catches_up(cluster):
    topic = "wiped"
    create_topic(cluster, topic, config={"retention.ms": "-1"})
    produce_n(cluster, topic, 5000, b"before")
    victim = 3
    cluster[victim].kill()
    shutil.rmtree(cluster[victim].data_dir)
    cluster[victim].data_dir.mkdir()
    produce_n(cluster, topic, 2000, b"while-away")
    # Its session expires (broker-session-timeout-ms, 9 s): Metadata stops naming it.
    wait_for(lambda: listed_brokers(cluster) == [1, 2], "the dead broker to be fenced", 30)
    cluster[victim].start()
    wait_for(lambda: listed_brokers(cluster) == [1, 2, 3], "the broker to be listed again", 30)
    produce_n(cluster, topic, 1000, b"after")
    hw = high_watermark(cluster, topic)
    wait_for(lambda: replica_logs_agree(cluster, topic, hw),
             "the wiped broker's replica to hold the same batches as the others", 60)
    messages = confluent_consume_all(cluster.bootstrap, topic, 8000, settle_s=0.5)
    assert [m.value() for m in messages][:1] == [b"before-0"]
    # The wiped broker serves as a leader again once it leads (preferred replica: no).
    md = partitions_of(cluster, topic)
    assert md[0][1] and sorted(md[0][1]) == [1, 2, 3]


def test_paused_broker_resumes_without_a_leadership_storm(cluster):
    topic = "paused"
    create_topic(cluster, topic, partitions=3, config={"retention.ms": "-1"})
    produce_n(cluster, topic, 100, b"warmup")
    # Leaders on the preferred replicas (the first of each list; the balancer moves them
    # there if an early election went elsewhere), every replica in sync.
    preferred = {p: replicas[0] for p, (_, replicas, _) in partitions_of(cluster, topic).items()}

    def settled():
        now = partitions_of(cluster, topic)
        return ({p: leader for p, (leader, _, _) in now.items()} == preferred
                and all(sorted(isrs) == sorted(replicas)
                        for _, replicas, isrs in now.values()))
    wait_for(settled, "leaders on the preferred replicas, every replica in sync", 45)
    before = preferred
    epochs_before = epochs_of(cluster, topic)
    victim = before[0]
    stop = threading.Event()
    errors = []

    def background_load():
        p = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all",
                      "linger.ms": 5, "enable.idempotence": False,
                      "message.timeout.ms": 60000})
        i = 0
        while not stop.is_set():
            p.produce(topic, value=b"bg-%d" % i, partition=i % 3,
                      on_delivery=lambda err, msg: err and errors.append(err))
            i += 1
            p.poll(0.005)
        p.flush(60)

    loader = threading.Thread(target=background_load)
    loader.start()
    try:
        cluster[victim].signal(signal.SIGSTOP)
        time.sleep(10)
        # Asked of the other brokers only: a stopped broker accepts connections (the
        # kernel does) but never answers.
        others = ",".join(cluster[i].bootstrap for i in (1, 2, 3) if i != victim)
        during = partitions_of(cluster, topic, others)
        time.sleep(10)
        cluster[victim].signal(signal.SIGCONT)
        # It rejoins (unfenced, back in the in-sync sets), then the balancer (every 5 s)
        # hands leadership back to the preferred replicas.
        wait_for(settled, "leaders back on the preferred replicas, every replica in sync", 45)
    finally:
        stop.set()
        loader.join(90)
    epochs_after = epochs_of(cluster, topic)
    for p in before:
        bumps = epochs_after[p] - epochs_before[p]
        # At most: an election while the victim was paused, and the transfer back to the
        # preferred replica after. A storm would show as many more terms.
        assert bumps <= 3, f"partition {p}: leader epoch went {epochs_before[p]} -> " \
                           f"{epochs_after[p]} over one 20 s pause"
    # While paused the broker dropped out of every in-sync set and led nothing.
    for p, (leader, replicas, isrs) in during.items():
        assert leader != victim and victim not in isrs and sorted(isrs) == \
            sorted(r for r in replicas if r != victim), f"partition {p} while paused: {during[p]}"
    # (Leaders back on the preferred replicas and full in-sync sets were waited for
    # above: asking once more could reach a broker whose image is a moment behind.)
    produce_n(cluster, topic, 100, b"after")


def epochs_of(cluster, topic):
    """Leader epoch of each partition, from kafka-python's Metadata (v7+ carries it)."""
    from kafka import KafkaAdminClient
    a = KafkaAdminClient(bootstrap_servers=cluster.bootstrap, request_timeout_ms=T * 1000)
    try:
        [desc] = a.describe_topics([topic])
        return {p["partition_index"]: p["leader_epoch"] for p in desc["partitions"]}
    finally:
        a.close()


# ---------------------------------------------------------------------------------------
# 4. Produce to a follower

def test_produce_to_a_follower_gets_not_leader_and_metadata_finds_the_leader(cluster):
    # kafka-python's own network client and ProduceRequest, sent to a chosen broker.
    from kafka import KafkaProducer
    from kafka.errors import NotLeaderForPartitionError
    from kafka.net.compat import KafkaNetClient
    from kafka.protocol.producer import ProduceRequest
    from kafka.record import MemoryRecordsBuilder

    topic = "follower"
    create_topic(cluster, topic)
    leader = current_leader(cluster, topic)
    follower = next(i for i in (1, 2, 3) if i != leader)

    builder = MemoryRecordsBuilder(magic=2, compression_type=0, batch_size=1 << 20)
    builder.append(timestamp=None, key=None, value=b"to-a-follower", headers=[])
    builder.close()
    Topic = ProduceRequest.TopicProduceData
    request = ProduceRequest(
        transactional_id=None, acks=-1, timeout_ms=10000, min_version=3, max_version=9,
        topic_data=[Topic(name=topic, partition_data=[
            Topic.PartitionProduceData(index=0, records=builder.buffer())])])
    client = KafkaNetClient(bootstrap_servers=cluster[follower].bootstrap)
    try:
        client.check_version()
        response = client.send_and_receive(follower, request, timeout_ms=T * 1000)
    finally:
        client.close()
    [partition] = response.responses[0].partition_responses
    assert partition.error_code == NotLeaderForPartitionError.errno, response

    # A producer that only knows the follower finds the leader through Metadata.
    producer = KafkaProducer(bootstrap_servers=cluster[follower].bootstrap, acks="all",
                             enable_idempotence=False, request_timeout_ms=T * 1000)
    try:
        meta = producer.send(topic, value=b"found-the-leader", partition=0).get(timeout=T)
    finally:
        producer.close(timeout=10)
    assert meta.offset >= 0
    messages = confluent_consume_all(cluster.bootstrap, topic, 1, settle_s=0.5)
    assert [m.value() for m in messages] == [b"found-the-leader"]


# ---------------------------------------------------------------------------------------
# 5. strand dev cluster

def test_dev_cluster_starts_three_brokers_and_stops_them_cleanly(tmp_path):
    import random
    import socket
    import subprocess
    from conftest import port_accepts, strand_bin

    def free(port):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return True
            except OSError:
                return False

    rng = random.Random()
    for _ in range(100):
        base = rng.randrange(20000, 40000)
        if all(free(p) for p in (base, base + 1, base + 2, base + 1000, base + 1001, base + 1002)):
            break
    log = open(tmp_path / "dev.log", "wb")
    proc = subprocess.Popen([str(strand_bin()), "dev", "cluster", "--brokers", "3",
                             "--base-port", str(base), "--data-dir", str(tmp_path / "dev")],
                            stdout=log, stderr=log)
    try:
        bootstrap = ",".join(f"127.0.0.1:{base + i}" for i in range(3))
        wait_for(lambda: all(port_accepts(base + i) for i in range(3)), "the three listeners", 30)
        out = wait_for(lambda: (lambda o: o if " 3 brokers:" in o else None)(
            kcat(bootstrap, "-L", check=False).stdout.decode()), "3 brokers in Metadata", 30)
        for i in range(3):
            assert f"broker {i + 1} at 127.0.0.1:{base + i}" in out, out
        assert sorted(p.name for p in (tmp_path / "dev").iterdir()) == ["1", "2", "3"]
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True)
        assert len(children.stdout.split()) == 3, children
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        log.close()
    assert code == 0, (tmp_path / "dev.log").read_text(errors="replace")[-3000:]
    # Every broker shut down cleanly (each logs it) and no process is left.
    text = (tmp_path / "dev.log").read_text(errors="replace")
    assert text.count("clean shutdown complete") == 3, text[-3000:]
    assert not any(port_accepts(base + i) for i in range(3))

"""Consumer groups against a three-broker cluster, with unmodified clients.

Each test gets a fresh cluster (conftest.py `cluster`). Consumers run in threads of
their own (one client object per thread) and record what they consume and what they are
assigned; the main thread starts and stops them, kills brokers and checks:
- every record produced is consumed by the group (at least once), partitions are
  balanced over the members, and a member leaving or joining rebalances the group within
  the rebalance timeout (confluent-kafka and kafka-python);
- SIGKILL of the group's coordinator: the group carries on under a new coordinator,
  committed offsets survive and never go backwards;
- a static member (group.instance.id) restarting within its session timeout gets its
  partitions back without a rebalance.
"""

import threading
import time
from collections import Counter

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from test_cluster import create_topic, wait_for

PARTITIONS = 6
# Small timeouts so that rebalances are quick; a rebalance must finish within the
# rebalance timeout (max.poll.interval.ms).
SESSION_TIMEOUT_MS = 6000
REBALANCE_TIMEOUT_MS = 15000
HEARTBEAT_MS = 500


def produce(bootstrap, topic, start, count):
    """Records `start..start+count`, keyed and valued by their number, acks=all."""
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5,
                  "message.timeout.ms": 60000})
    failed = []

    def cb(err, _msg):
        if err is not None:
            failed.append(err)

    for i in range(start, start + count):
        while True:
            try:
                p.produce(topic, key=str(i).encode(), value=str(i).encode(), on_delivery=cb)
                break
            except BufferError:
                p.poll(0.1)
        p.poll(0)
    assert p.flush(90) == 0, "records left unsent"
    assert not failed, failed[:5]


class Member(threading.Thread):
    """One group member in its own thread: consumes, counts each record's value, keeps
    its current assignment and how many times it was assigned partitions."""

    def __init__(self, name, seen, lock):
        super().__init__(name=name, daemon=True)
        self.seen = seen
        self.lock = lock
        self.assignment = frozenset()
        self.assigned_count = 0
        self.stopping = threading.Event()
        self.error = None

    def record(self, value):
        with self.lock:
            self.seen[int(value)] += 1

    def stop(self, timeout=30):
        self.stopping.set()
        self.join(timeout)
        assert not self.is_alive(), f"{self.name} did not stop"
        assert self.error is None, f"{self.name}: {self.error!r}"


class ConfluentMember(Member):
    def __init__(self, bootstrap, group, topic, seen, lock, name, conf=None, commits=None):
        super().__init__(name, seen, lock)
        self.topic = topic
        self.commits = commits
        # Every partition taken back from this member, in order.
        self.revoked = []
        self.conf = {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": SESSION_TIMEOUT_MS,
            "heartbeat.interval.ms": HEARTBEAT_MS,
            "max.poll.interval.ms": REBALANCE_TIMEOUT_MS,
            "enable.auto.commit": True,
            "auto.commit.interval.ms": 300,
            "partition.assignment.strategy": "range",
            "on_commit": self.on_commit,
            **(conf or {}),
        }
        self.cooperative = self.conf["partition.assignment.strategy"] == "cooperative-sticky"

    def on_commit(self, err, partitions):
        if err is None and self.commits is not None:
            with self.lock:
                for tp in partitions:
                    if tp.error is None and tp.offset >= 0:
                        self.commits.append((tp.partition, tp.offset))

    def on_assign(self, _consumer, partitions):
        given = frozenset(tp.partition for tp in partitions)
        # Cooperative assignors hand out and take back partitions incrementally.
        if self.cooperative:
            self.assignment = self.assignment | given
        else:
            self.assignment = given
        self.assigned_count += 1

    def on_revoke(self, _consumer, partitions):
        taken = frozenset(tp.partition for tp in partitions)
        self.revoked.extend(sorted(taken))
        if self.cooperative:
            self.assignment = self.assignment - taken
        else:
            self.assignment = frozenset()

    def run(self):
        try:
            c = Consumer(self.conf)
            c.subscribe([self.topic], on_assign=self.on_assign, on_revoke=self.on_revoke)
            while not self.stopping.is_set():
                m = c.poll(0.2)
                if m is None or m.error():
                    continue
                self.record(m.value())
            # Sends LeaveGroup, except for a static member (KIP-345).
            c.close()
        except Exception as e:  # reported by stop()
            self.error = e


class KafkaPythonMember(Member):
    def __init__(self, bootstrap, group, topic, seen, lock, name):
        super().__init__(name, seen, lock)
        self.bootstrap = bootstrap
        self.group = group
        self.topic = topic

    def run(self):
        from kafka import KafkaConsumer
        try:
            c = KafkaConsumer(
                bootstrap_servers=self.bootstrap.split(","), group_id=self.group,
                auto_offset_reset="earliest", session_timeout_ms=SESSION_TIMEOUT_MS,
                heartbeat_interval_ms=HEARTBEAT_MS, max_poll_interval_ms=REBALANCE_TIMEOUT_MS,
                enable_auto_commit=True, auto_commit_interval_ms=300,
                request_timeout_ms=REBALANCE_TIMEOUT_MS + 5000)
            c.subscribe([self.topic])
            last = None
            while not self.stopping.is_set():
                batches = c.poll(timeout_ms=200)
                for records in batches.values():
                    for r in records:
                        self.record(r.value)
                now = frozenset(tp.partition for tp in c.assignment())
                if now != last:
                    if now:
                        self.assigned_count += 1
                    last = now
                self.assignment = now
            c.close()
        except Exception as e:
            self.error = e


def balanced(members, partitions=PARTITIONS):
    """Every partition assigned to exactly one member, and counts differ by at most one."""
    for m in members:
        if m.error is not None:
            raise AssertionError(f"{m.name} failed: {m.error!r}")
    sets = [m.assignment for m in members]
    union = frozenset().union(*sets)
    if union != frozenset(range(partitions)) or sum(len(s) for s in sets) != partitions:
        return False
    sizes = [len(s) for s in sets]
    return max(sizes) - min(sizes) <= 1


def wait_balanced(members, what, timeout_s):
    start = time.monotonic()
    wait_for(lambda: balanced(members), what, timeout_s=timeout_s)
    return time.monotonic() - start


def run_group_over_three_brokers(cluster, make_member, group):
    """Three members consume 60,000 records while one leaves and another joins."""
    topic = "orders"
    create_topic(cluster, topic, partitions=PARTITIONS, rf=3)
    seen, lock = Counter(), threading.Lock()
    produce(cluster.bootstrap, topic, 0, 20000)
    members = [make_member(cluster.bootstrap, group, topic, seen, lock, f"m{i}")
               for i in range(3)]
    for m in members:
        m.start()
    # The first generation: initial rebalance delay, then join, sync.
    wait_balanced(members, "three members sharing six partitions", 60)
    assert sorted(len(m.assignment) for m in members) == [2, 2, 2]
    produce(cluster.bootstrap, topic, 20000, 20000)

    # A member leaves (LeaveGroup): the other two take its partitions.
    leaving = members.pop()
    leaving.stop()
    took = wait_balanced(members, "two members after one left", REBALANCE_TIMEOUT_MS / 1000)
    assert sorted(len(m.assignment) for m in members) == [3, 3]
    assert took < REBALANCE_TIMEOUT_MS / 1000

    # A member joins: back to two partitions each.
    joining = make_member(cluster.bootstrap, group, topic, seen, lock, "m3")
    joining.start()
    members.append(joining)
    took = wait_balanced(members, "three members after one joined",
                         REBALANCE_TIMEOUT_MS / 1000 + SESSION_TIMEOUT_MS / 1000)
    assert sorted(len(m.assignment) for m in members) == [2, 2, 2]
    produce(cluster.bootstrap, topic, 40000, 20000)

    def all_seen():
        with lock:
            return len(seen) == 60000
    wait_for(all_seen, "every one of the 60,000 records consumed", timeout_s=120)
    for m in members:
        m.stop()
    with lock:
        assert set(seen) == set(range(60000))


def test_confluent_three_consumers_share_a_topic_and_rebalance(cluster):
    run_group_over_three_brokers(cluster, ConfluentMember, "confluent-group")


def test_kafka_python_three_consumers_share_a_topic_and_rebalance(cluster):
    run_group_over_three_brokers(cluster, KafkaPythonMember, "kafka-python-group")


def test_cooperative_sticky_members_give_up_only_the_partitions_that_move(cluster):
    """KIP-429 incremental rebalancing through the classic protocol: when a third member
    joins, the two others keep four of their six partitions throughout and give up only
    the two that move to it."""
    topic, group = "sticky", "cooperative-group"
    create_topic(cluster, topic, partitions=PARTITIONS, rf=3)
    seen, lock = Counter(), threading.Lock()
    produce(cluster.bootstrap, topic, 0, 3000)

    def member(name):
        return ConfluentMember(cluster.bootstrap, group, topic, seen, lock, name,
                               conf={"partition.assignment.strategy": "cooperative-sticky"})
    first = [member("m0"), member("m1")]
    for m in first:
        m.start()
    wait_balanced(first, "two cooperative members sharing six partitions", 60)
    before = {m.name: m.assignment for m in first}
    for m in first:
        m.revoked.clear()
    joining = member("m2")
    joining.start()
    everyone = first + [joining]
    wait_balanced(everyone, "three cooperative members after one joined",
                  REBALANCE_TIMEOUT_MS / 1000 + SESSION_TIMEOUT_MS / 1000)
    moved = sorted(p for m in first for p in m.revoked)
    assert moved == sorted(joining.assignment), (
        f"revoked {moved}, the new member got {sorted(joining.assignment)}")
    for m in first:
        assert m.assignment <= before[m.name], f"{m.name} got other partitions"
    wait_for(lambda: len(seen) == 3000, "every record consumed", 60)
    for m in everyone:
        m.stop()


def committed_offsets(bootstrap, group, topic):
    """{partition: committed offset} of a group, read with a consumer that never joins."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        tps = c.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)
        return {tp.partition: tp.offset for tp in tps if tp.error is None}
    finally:
        c.close()


def coordinator_of(cluster, group):
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    described = admin.describe_consumer_groups([group], request_timeout=10)[group].result()
    return described.coordinator.id


def test_sigkill_of_the_coordinator_keeps_the_group_and_its_offsets(cluster):
    topic, group = "payments", "survivors"
    create_topic(cluster, topic, partitions=PARTITIONS, rf=3)
    seen, lock, commits = Counter(), threading.Lock(), []
    produce(cluster.bootstrap, topic, 0, 10000)
    members = [ConfluentMember(cluster.bootstrap, group, topic, seen, lock, f"m{i}",
                               commits=commits) for i in range(2)]
    for m in members:
        m.start()
    wait_balanced(members, "two members sharing six partitions", 60)

    def committed_everything(total):
        offsets = committed_offsets(cluster.bootstrap, group, topic)
        return sum(max(o, 0) for o in offsets.values()) >= total and offsets
    # Committed offsets count the control batch of each partition's first leader, so
    # "everything" is at least the records themselves.
    before = wait_for(lambda: committed_everything(10000), "offsets of 10,000 records committed")

    victim = coordinator_of(cluster, group)
    cluster[victim].kill()
    produce(cluster.bootstrap, topic, 10000, 10000)
    # Another broker becomes the coordinator, loads the group and its offsets, and the
    # members carry on from them.
    new_coordinator = wait_for(
        lambda: (c := coordinator_of(cluster, group)) != victim and c, "a new coordinator")
    assert new_coordinator != victim

    def all_seen():
        with lock:
            return len(seen) == 20000
    wait_for(all_seen, "all 20,000 records consumed after the coordinator died", 120)
    after = wait_for(lambda: committed_everything(20000), "offsets of 20,000 records committed")
    for p, offset in before.items():
        assert after[p] >= offset, f"partition {p}: committed {offset} went back to {after[p]}"
    for m in members:
        m.stop()
    # Every commit a member was told succeeded is at or below what is committed now.
    final = committed_offsets(cluster.bootstrap, group, topic)
    with lock:
        for p, offset in commits:
            assert final[p] >= offset, f"partition {p}: acknowledged {offset}, now {final[p]}"
        assert set(seen) == set(range(20000))
    cluster[victim].start()


def test_a_static_member_restarting_within_its_session_causes_no_rebalance(cluster):
    topic, group = "static-topic", "static-group"
    create_topic(cluster, topic, partitions=PARTITIONS, rf=3)
    seen, lock = Counter(), threading.Lock()
    produce(cluster.bootstrap, topic, 0, 1000)

    def member(instance):
        return ConfluentMember(cluster.bootstrap, group, topic, seen, lock, instance,
                               conf={"group.instance.id": instance,
                                     "session.timeout.ms": 20000,
                                     "max.poll.interval.ms": 25000})
    a, b = member("instance-a"), member("instance-b")
    a.start()
    b.start()
    wait_balanced([a, b], "two static members sharing six partitions", 60)
    b_partitions, a_assigned = b.assignment, a.assigned_count
    # Restart b: close (a static member sends no LeaveGroup) and come back with the same
    # instance id well within its 20 s session.
    b.stop()
    restarted = member("instance-b")
    restarted.start()
    wait_for(lambda: restarted.assignment, "the restarted static member's partitions", 15)
    assert restarted.assignment == b_partitions, "the static member got other partitions"
    # No rebalance: the other member was never reassigned, during and well after.
    time.sleep(3)
    assert a.assigned_count == a_assigned, "the other member went through a rebalance"
    assert balanced([a, restarted])
    a.stop()
    restarted.stop()


def test_a_consumer_that_assigns_itself_commits_and_fetches_offsets(broker):
    """A group with no members (assign(), no subscribe) only stores offsets; a second
    consumer of the same group id reads them back, and resumes from them."""
    topic, group = "assigned", "offsets-only"
    produce(broker.bootstrap, topic, 0, 100)
    tps = [TopicPartition(topic, 0, 40)]
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group,
                  "enable.auto.commit": False})
    try:
        c.assign(tps)
        committed = c.commit(offsets=tps, asynchronous=False)
        assert [(tp.partition, tp.offset, tp.error) for tp in committed] == [(0, 40, None)]
    finally:
        c.close()
    assert committed_offsets(broker.bootstrap, group, topic).get(0) == 40
    # A new consumer of the group resumes from the committed offset: the first record it
    # gets is the one at offset 40 (offset 0 is the first leader's control batch, so the
    # record numbered 39 sits there).
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group,
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    try:
        c.assign([TopicPartition(topic, 0)])
        m = None
        deadline = time.monotonic() + 30
        while m is None and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and m.error():
                m = None
        assert m is not None, "nothing consumed"
        assert m.offset() == 40
        assert m.value() == b"39"
    finally:
        c.close()

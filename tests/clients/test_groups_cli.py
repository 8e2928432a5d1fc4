"""`strand groups list` and `strand groups describe` (the kafka-consumer-groups view)
against a real broker, checked against what confluent-kafka itself reports.

- A two-member confluent-kafka group commits known offsets on a four-partition topic;
  `describe` must show the same members and assignments as
  `AdminClient.describe_consumer_groups`, the committed offsets of
  `AdminClient.list_consumer_group_offsets`, the high watermarks of
  `Consumer.get_watermark_offsets`, and lag = log end offset - committed offset.
- After the members leave: state Empty, no members, the same offsets, lag following new
  records.
- An unknown group: a clear message and exit code 1.
- Three brokers: a group whose coordinator is not the bootstrap broker; `list` asks
  every broker (each lists only the groups it coordinates).
"""

import re
import subprocess
import threading
import time

from confluent_kafka import (ConsumerGroupState, ConsumerGroupTopicPartitions, Consumer,
                             KafkaError, KafkaException, Producer, TopicPartition)
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import strand_bin
from test_cluster import create_topic, wait_for

T = 30
TOPIC = "orders"
# Records produced to each partition of TOPIC, and what the group commits there: an
# offset inside the partition, one at its end, and partitions with nothing committed.
RECORDS = {0: 10, 1: 25, 2: 7, 3: 40}
# The first record of a new partition is at offset 1 (the leader's control batch is 0).
COMMITS = {0: 4, 1: 26, 3: 13}
SESSION_TIMEOUT_MS = 6000
COORDINATOR_NOT_READY = {KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                         KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError.NOT_COORDINATOR}
OFFSETS_COLUMNS = ["GROUP", "TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG",
                   "CONSUMER-ID", "HOST", "CLIENT-ID"]
# Kafka's state names as confluent-kafka's ConsumerGroupState spells them.
CLIENT_STATES = {"PreparingRebalance": "PREPARING_REBALANCING",
                 "CompletingRebalance": "COMPLETING_REBALANCING", "Stable": "STABLE",
                 "Empty": "EMPTY", "Dead": "DEAD"}
MEMBERS_COLUMNS = ["GROUP", "CONSUMER-ID", "GROUP-INSTANCE-ID", "HOST", "CLIENT-ID",
                   "#PARTITIONS", "ASSIGNMENT"]


# ---------------------------------------------------------------------------------------
# Running the CLI and reading what it prints

def strand_groups(*args, timeout_s=60):
    proc = subprocess.run([str(strand_bin()), "groups", *args], capture_output=True,
                          text=True, timeout=timeout_s)
    return proc


def strand_groups_ok(*args):
    proc = strand_groups(*args)
    assert proc.returncode == 0, (f"strand groups {' '.join(args)} exited {proc.returncode}\n"
                                  f"stdout: {proc.stdout}\nstderr: {proc.stderr}")
    return proc.stdout


def table(lines, columns):
    """Rows of a table printed by the CLI, as dicts by column name."""
    assert lines, "no table"
    assert lines[0].split() == columns, f"header {lines[0]!r}"
    rows = []
    for line in lines[1:]:
        cells = line.split()
        assert len(cells) == len(columns), f"row {line!r}"
        rows.append(dict(zip(columns, cells)))
    return rows


HEADER = re.compile(r"^Consumer group '(?P<group>[^']*)': state (?P<state>\w+), "
                    r"(?P<members>\d+) members?, protocol (?P<protocol>\S+), "
                    r"coordinator (?P<coordinator>-?\d+) \((?P<address>[^)]*)\)$")


def describe(bootstrap, group, members=False):
    """(header fields, rows) of `strand groups describe`."""
    args = ["describe", group, "--bootstrap", bootstrap]
    if members:
        args.append("--members")
    out = strand_groups_ok(*args).splitlines()
    m = HEADER.match(out[0])
    assert m, f"header line {out[0]!r}"
    assert out[1] == "", f"no blank line after the header: {out[:3]}"
    return m.groupdict(), table(out[2:], MEMBERS_COLUMNS if members else OFFSETS_COLUMNS)


def listed(bootstrap):
    """{group: (protocol type, state)} of `strand groups list`."""
    rows = table(strand_groups_ok("list", "--bootstrap", bootstrap).splitlines(),
                 ["GROUP", "PROTOCOL-TYPE", "STATE"])
    return {r["GROUP"]: (r["PROTOCOL-TYPE"], r["STATE"]) for r in rows}


def parse_assignment(text):
    """`t(0,1),u(2)` -> {(t, 0), (t, 1), (u, 2)}."""
    if text == "-":
        return set()
    return {(topic, int(p)) for topic, ps in re.findall(r"([^(),]+)\(([\d,]+)\)", text)
            for p in ps.split(",")}


# ---------------------------------------------------------------------------------------
# What confluent-kafka reports

def produce_counts(bootstrap, topic, counts):
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
    failed = []
    for partition, n in counts.items():
        for i in range(n):
            p.produce(topic, value=f"{partition}-{i}".encode(), partition=partition,
                      on_delivery=lambda err, _m: err and failed.append(err))
    assert p.flush(T) == 0, "records left unsent"
    assert not failed, failed[:5]


def client_description(bootstrap, group):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    return admin.describe_consumer_groups([group], request_timeout=10)[group].result()


def client_listing(bootstrap):
    """{group: (simple?, state name)} as AdminClient.list_consumer_groups reports: a
    "simple" group is one with no protocol type."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    result = admin.list_consumer_groups(request_timeout=10).result()
    assert not result.errors, result.errors
    return {g.group_id: (g.is_simple_consumer_group, g.state.name)
            for g in result.valid}


def check_listing(bootstrap, cli_bootstrap=None):
    """`strand groups list` names the groups confluent-kafka lists, with the same states
    and protocol types (none: `-`); returns them."""
    shown = listed(cli_bootstrap or bootstrap)
    expected = client_listing(bootstrap)
    assert set(shown) == set(expected), (shown, expected)
    for g, (protocol_type, state) in shown.items():
        simple, client_state = expected[g]
        assert CLIENT_STATES.get(state) == client_state, (g, state, client_state)
        assert (protocol_type == "-") == simple, (g, protocol_type, simple)
    return shown


def client_committed(bootstrap, group):
    """{(topic, partition): offset} as AdminClient.list_consumer_group_offsets reports."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    result = admin.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group)], request_timeout=10)[group].result()
    return {(tp.topic, tp.partition): tp.offset for tp in result.topic_partitions
            if tp.offset >= 0}


def high_watermarks(bootstrap, topic, partitions):
    """{partition: high watermark}; asked again while a leader is moving."""
    def ask():
        c = Consumer({"bootstrap.servers": bootstrap, "group.id": "strand-watermarks"})
        try:
            return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                    for p in partitions}
        finally:
            c.close()
    return wait_for(ask, f"the high watermarks of {topic}", timeout_s=T)


def described_with_watermarks(bootstrap, cli_bootstrap, group):
    """(header, rows, high watermarks) with the watermarks read just before and just
    after `describe` and equal: a leader election between the two would add a control
    batch (one offset) to a log end offset, so such a run is repeated."""
    for _ in range(5):
        before = high_watermarks(bootstrap, TOPIC, RECORDS)
        header, rows = describe(cli_bootstrap, group)
        if high_watermarks(bootstrap, TOPIC, RECORDS) == before:
            return header, rows, before
    raise AssertionError("the log end offsets never held still across a describe")


def commit_offsets(bootstrap, group, topic, offsets):
    """Commits {partition: offset} for a group without joining it (assign, no subscribe)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                  "enable.auto.commit": False})
    try:
        tps = [TopicPartition(topic, p, o) for p, o in offsets.items()]
        c.assign(tps)
        # librdkafka hands a synchronous commit's COORDINATOR_LOAD_IN_PROGRESS back (a
        # coordinator of a new cluster may still be loading): ask again, bounded.
        deadline = time.monotonic() + T
        while True:
            try:
                done = c.commit(offsets=tps, asynchronous=False)
                break
            except KafkaException as e:
                if (e.args[0].code() not in COORDINATOR_NOT_READY
                        or time.monotonic() > deadline):
                    raise
                time.sleep(0.2)
        assert all(tp.error is None for tp in done), done
    finally:
        c.close()


class CommittingMember(threading.Thread):
    """A group member that consumes and, when told, commits COMMITS for the partitions
    it is assigned (auto commit off), then keeps polling until stopped."""

    def __init__(self, bootstrap, group, name):
        super().__init__(name=name, daemon=True)
        self.conf = {"bootstrap.servers": bootstrap, "group.id": group,
                     "client.id": name, "enable.auto.commit": False,
                     "auto.offset.reset": "earliest",
                     "session.timeout.ms": SESSION_TIMEOUT_MS, "heartbeat.interval.ms": 500,
                     "partition.assignment.strategy": "range"}
        self.assignment = frozenset()
        self.consumed = 0
        self.commit_now = threading.Event()
        self.committed = threading.Event()
        self.stopping = threading.Event()
        self.error = None

    def on_assign(self, _c, partitions):
        self.assignment = frozenset(tp.partition for tp in partitions)

    def on_revoke(self, _c, _partitions):
        self.assignment = frozenset()

    def run(self):
        try:
            c = Consumer(self.conf)
            c.subscribe([TOPIC], on_assign=self.on_assign, on_revoke=self.on_revoke)
            while not self.stopping.is_set():
                m = c.poll(0.2)
                if m is not None and not m.error():
                    self.consumed += 1
                if self.commit_now.is_set() and not self.committed.is_set():
                    tps = [TopicPartition(TOPIC, p, COMMITS[p])
                           for p in sorted(self.assignment) if p in COMMITS]
                    if tps:
                        done = c.commit(offsets=tps, asynchronous=False)
                        errors = [tp for tp in done if tp.error is not None]
                        assert not errors, errors
                    self.committed.set()
            c.close()  # LeaveGroup
        except Exception as e:  # reported by stop()
            self.error = e
            self.committed.set()

    def stop(self):
        self.stopping.set()
        self.join(30)
        assert not self.is_alive(), f"{self.name} did not stop"
        assert self.error is None, f"{self.name}: {self.error!r}"


def check_against_clients(bootstrap, group, rows, marks, expect_members):
    """The offsets rows agree with confluent-kafka's own view of the group."""
    committed = client_committed(bootstrap, group)
    assert committed == {(TOPIC, p): o for p, o in COMMITS.items()}, committed
    by_partition = {int(r["PARTITION"]): r for r in rows if r["TOPIC"] == TOPIC}
    shown = set(by_partition)
    expected_partitions = set(COMMITS) | (set(RECORDS) if expect_members else set())
    assert shown == expected_partitions, rows
    for p, row in by_partition.items():
        assert row["GROUP"] == group
        assert int(row["LOG-END-OFFSET"]) == marks[p], (p, row, marks)
        if (TOPIC, p) in committed:
            assert int(row["CURRENT-OFFSET"]) == committed[(TOPIC, p)], (p, row)
            assert int(row["LAG"]) == marks[p] - committed[(TOPIC, p)], (p, row)
        else:
            assert row["CURRENT-OFFSET"] == "-" and row["LAG"] == "-", (p, row)


# ---------------------------------------------------------------------------------------
# Tests

def test_describe_and_list_match_confluent_kafka(broker):
    bootstrap, group = broker.bootstrap, "cli-group"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(TOPIC, num_partitions=len(RECORDS), replication_factor=1)],
                        operation_timeout=T)[TOPIC].result(timeout=T)
    produce_counts(bootstrap, TOPIC, RECORDS)

    members = [CommittingMember(bootstrap, group, f"member-{i}") for i in range(2)]
    for m in members:
        m.start()
    try:
        wait_for(lambda: sorted(len(m.assignment) for m in members) == [2, 2]
                 and all(m.error is None for m in members),
                 "two members with two partitions each", timeout_s=60)
        for m in members:
            m.commit_now.set()
        for m in members:
            assert m.committed.wait(T), f"{m.name} did not commit"
            assert m.error is None, f"{m.name}: {m.error!r}"
        wait_for(lambda: client_committed(bootstrap, group) == {
            (TOPIC, p): o for p, o in COMMITS.items()}, "the commits", timeout_s=T)

        # The group is Stable with both members: what confluent-kafka sees of it ...
        description = client_description(bootstrap, group)
        assert description.state == ConsumerGroupState.STABLE
        client_members = {m.member_id: m for m in description.members}
        assert len(client_members) == 2
        client_owner = {(tp.topic, tp.partition): m.member_id
                        for m in description.members for tp in m.assignment.topic_partitions}

        # ... and what `strand groups describe` prints.
        header, rows, marks = described_with_watermarks(bootstrap, bootstrap, group)
        assert header["state"] == "Stable" and header["members"] == "2", header
        assert header["protocol"] == "consumer/range", header
        assert int(header["coordinator"]) == description.coordinator.id == 1
        check_against_clients(bootstrap, group, rows, marks, expect_members=True)
        for row in rows:
            key = (row["TOPIC"], int(row["PARTITION"]))
            member = client_members[client_owner[key]]
            assert row["CONSUMER-ID"] == member.member_id, (row, client_owner)
            assert row["HOST"] == member.host and row["CLIENT-ID"] == member.client_id, row
        assert {r["CLIENT-ID"] for r in rows} == {"member-0", "member-1"}

        header, member_rows = describe(bootstrap, group, members=True)
        assert header["state"] == "Stable" and header["members"] == "2", header
        assert {r["CONSUMER-ID"] for r in member_rows} == set(client_members)
        for row in member_rows:
            member = client_members[row["CONSUMER-ID"]]
            expected = {(tp.topic, tp.partition) for tp in member.assignment.topic_partitions}
            assert parse_assignment(row["ASSIGNMENT"]) == expected, row
            assert int(row["#PARTITIONS"]) == len(expected) == 2, row
            assert row["GROUP-INSTANCE-ID"] == "-" and row["CLIENT-ID"] == member.client_id

        assert check_listing(bootstrap) == {group: ("consumer", "Stable")}
    finally:
        for m in members:
            m.stop()

    # Both members left: Empty, no members, the offsets stay; lag follows new records.
    wait_for(lambda: client_description(bootstrap, group).state == ConsumerGroupState.EMPTY,
             "the group to be empty", timeout_s=T)
    produce_counts(bootstrap, TOPIC, {0: 3, 2: 5})
    header, rows, marks = described_with_watermarks(bootstrap, bootstrap, group)
    assert header["state"] == "Empty" and header["members"] == "0", header
    check_against_clients(bootstrap, group, rows, marks, expect_members=False)
    assert marks[0] == 1 + RECORDS[0] + 3
    assert {(r["CONSUMER-ID"], r["HOST"], r["CLIENT-ID"]) for r in rows} == {("-", "-", "-")}
    header, member_rows = describe(bootstrap, group, members=True)
    assert header["state"] == "Empty" and member_rows == []
    # (Kafka keeps an empty group's protocol type; Strand's coordinator clears it, so
    # this only checks that the CLI shows what the broker answers.)
    assert check_listing(bootstrap)[group][1] == "Empty"


def test_an_unknown_group_is_reported_not_described(broker):
    proc = strand_groups("describe", "no-such-group", "--bootstrap", broker.bootstrap)
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == ""
    assert "consumer group 'no-such-group' does not exist" in proc.stderr, proc.stderr
    assert "panicked" not in proc.stderr
    # No groups at all: just the header.
    assert listed(broker.bootstrap) == {}


def test_no_reachable_broker_is_a_clear_error_within_the_timeout(tmp_path):
    from conftest import free_port
    dead = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    proc = strand_groups("describe", "g", "--bootstrap", dead, "--timeout-ms", "1500")
    took = time.monotonic() - started
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "no bootstrap broker reachable" in proc.stderr and dead in proc.stderr, proc.stderr
    assert "panicked" not in proc.stderr
    assert took < 15, took
    proc = strand_groups("list", "--bootstrap", dead, "--timeout-ms", "500")
    assert proc.returncode == 1 and "no bootstrap broker reachable" in proc.stderr


def test_a_coordinator_other_than_the_bootstrap_broker(cluster):
    """Groups committed on a three-broker cluster: describe through broker 1 (after an
    address that refuses connections) reaches each group's own coordinator and each
    partition's leader; list gathers the groups of every coordinator."""
    create_topic(cluster, TOPIC, partitions=len(RECORDS), rf=3)
    produce_counts(cluster.bootstrap, TOPIC, RECORDS)
    groups = [f"spread-{i}" for i in range(8)]
    for g in groups:
        commit_offsets(cluster.bootstrap, g, TOPIC, COMMITS)
    coordinators = {g: client_description(cluster.bootstrap, g).coordinator.id
                    for g in groups}
    elsewhere = [g for g in groups if coordinators[g] != 1]
    assert elsewhere, f"every group coordinated by broker 1: {coordinators}"

    from conftest import free_port
    bootstrap = f"127.0.0.1:{free_port()},{cluster[1].bootstrap}"
    for g in elsewhere[:2]:
        header, rows, marks = described_with_watermarks(cluster.bootstrap, bootstrap, g)
        assert int(header["coordinator"]) == coordinators[g], (header, coordinators)
        assert header["state"] == "Empty" and header["members"] == "0", header
        check_against_clients(cluster.bootstrap, g, rows, marks, expect_members=False)

    everything = check_listing(cluster.bootstrap, cluster[1].bootstrap)
    assert set(everything) == set(groups), everything
    assert all(state == "Empty" for _, state in everything.values()), everything


def test_offsets_of_a_deleted_topic_show_no_log_end_and_do_not_recreate_it(broker):
    bootstrap, group = broker.bootstrap, "after-deletion"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic("gone", num_partitions=2, replication_factor=1)],
                        operation_timeout=T)["gone"].result(timeout=T)
    produce_counts(bootstrap, "gone", {0: 5, 1: 5})
    commit_offsets(bootstrap, group, "gone", {0: 3, 1: 6})
    admin.delete_topics(["gone"], operation_timeout=T)["gone"].result(timeout=T)
    wait_for(lambda: "gone" not in admin.list_topics(timeout=10).topics, "the deletion",
             timeout_s=T)

    started = time.monotonic()
    proc = strand_groups("describe", group, "--bootstrap", bootstrap)
    took = time.monotonic() - started
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    # An unknown topic is final: not asked again until --timeout-ms (30 s).
    assert took < 10, took
    lines = proc.stdout.splitlines()
    assert HEADER.match(lines[0]).group("state") == "Empty", lines[0]
    rows = table(lines[2:], OFFSETS_COLUMNS)
    # Strand keeps a deleted topic's committed offsets (as Kafka does until its cleanup).
    assert [(r["TOPIC"], r["PARTITION"], r["CURRENT-OFFSET"], r["LOG-END-OFFSET"], r["LAG"])
            for r in rows] == [("gone", "0", "3", "-", "-"), ("gone", "1", "6", "-", "-")]
    assert "no log end offset for gone-0" in proc.stderr, proc.stderr
    # Asking for the log end offsets never creates the topic again.
    time.sleep(0.5)
    assert "gone" not in admin.list_topics(timeout=10).topics

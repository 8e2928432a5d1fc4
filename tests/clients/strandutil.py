"""Helpers shared by the client tests: on-disk batch parsing, confluent-kafka and
kafka-python produce/consume loops (each bounded in count and time), and kcat."""

import signal
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

CODECS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
BATCH_HEADER_SIZE = 61


# ---------------------------------------------------------------------------------------
# On-disk RecordBatch v2 headers

def _crc32c_table():
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


try:  # fast path: the crc32c package (a kafka-python extra)
    from crc32c import crc32c as _fast_crc32c
except ImportError:
    _fast_crc32c = None


def crc32c(data: bytes) -> int:
    if _fast_crc32c is not None:
        return _fast_crc32c(data)
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


@dataclass
class StoredBatch:
    file: Path
    position: int
    base_offset: int
    batch_length: int
    partition_leader_epoch: int
    magic: int
    crc: int
    attributes: int
    last_offset_delta: int
    base_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    records_count: int
    crc_ok: bool

    @property
    def size(self) -> int:
        return 12 + self.batch_length

    @property
    def codec(self) -> int:
        return self.attributes & 0x7

    @property
    def last_offset(self) -> int:
        return self.base_offset + self.last_offset_delta

    @property
    def is_control(self) -> bool:
        """A control batch: the LEADER_CHANGE a new partition leader writes (Strand's
        Raft no-op), Raft configuration changes, later transaction markers. Consumers
        skip them, but they take offsets."""
        return bool(self.attributes & 0x20)


def parse_log_file(path: Path, check_crc=True) -> list:
    """Every batch in one .log file; asserts the file is a whole number of batches.
    crc_ok is None when `check_crc` is off."""
    data = path.read_bytes()
    batches = []
    pos = 0
    while pos < len(data):
        assert len(data) - pos >= BATCH_HEADER_SIZE, f"{path}: torn header at {pos}"
        (base_offset, batch_length, ple, magic, crc, attributes, lod, base_ts, max_ts,
         pid, pepoch, bseq, count) = struct.unpack_from(">qiibIhiqqqhii", data, pos)
        size = 12 + batch_length
        assert magic == 2, f"{path}: magic {magic} at position {pos}"
        assert pos + size <= len(data), f"{path}: torn batch at {pos}"
        crc_ok = crc32c(data[pos + 21:pos + size]) == crc if check_crc else None
        batches.append(StoredBatch(path, pos, base_offset, batch_length, ple, magic, crc,
                                   attributes, lod, base_ts, max_ts, pid, pepoch, bseq, count,
                                   crc_ok))
        pos += size
    return batches


def log_files(partition_dir: Path) -> list:
    files = sorted(partition_dir.glob("*.log"))
    for f in files:
        assert len(f.stem) == 20 and f.stem.isdigit(), f"unexpected segment name {f.name}"
    return files


def stored_batches(partition_dir: Path, check_crc=True) -> list:
    batches = []
    for f in log_files(partition_dir):
        batches.extend(parse_log_file(f, check_crc))
    return batches


def data_batches(partition_dir: Path, check_crc=True) -> list:
    """The stored batches that hold records (control batches left out)."""
    return [b for b in stored_batches(partition_dir, check_crc) if not b.is_control]


def contiguous(offsets) -> int:
    """Asserts `offsets` run without gaps (no leader changed while they were written)
    and returns the first. The first record of a new topic is not at offset 0: the
    partition leader's election takes an offset with its control batch."""
    offsets = list(offsets)
    assert offsets, "no offsets"
    base = offsets[0]
    assert base >= 0, f"offset {base}"
    assert offsets == list(range(base, base + len(offsets))), (
        f"offsets not contiguous from {base}: first differences at "
        f"{[(i, o) for i, o in enumerate(offsets) if o != base + i][:5]}")
    return base


# ---------------------------------------------------------------------------------------
# confluent-kafka

def confluent_produce(bootstrap: str, topic: str, records, conf=None, partition=0,
                      timeout_s=120.0):
    """Produces `records` (dicts with value and optional key, headers, timestamp) to one
    partition, in order; returns the delivery reports as (err, offset) in produce order.
    Asserts every delivery succeeded unless `conf` sets acks=0 (then offsets are -1)."""
    config = {"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5,
              "enable.idempotence": False}
    config.update(conf or {})
    producer = Producer(config)
    reports = [None] * len(records)

    def make_cb(i):
        def cb(err, msg):
            reports[i] = (err, msg.offset() if err is None else None)
        return cb

    deadline = time.monotonic() + timeout_s
    for i, r in enumerate(records):
        kwargs = {"value": r.get("value"), "partition": partition, "on_delivery": make_cb(i)}
        for k in ("key", "headers", "timestamp"):
            if k in r:
                kwargs[k] = r[k]
        while True:
            try:
                producer.produce(topic, **kwargs)
                break
            except BufferError:
                assert time.monotonic() < deadline, "producer queue stayed full"
                producer.poll(0.05)
        if i % 1000 == 0:
            producer.poll(0)
    while len(producer) > 0 and time.monotonic() < deadline:
        producer.flush(min(5.0, max(0.1, deadline - time.monotonic())))
    assert len(producer) == 0, f"{len(producer)} messages still undelivered after {timeout_s}s"
    missing = [i for i, rep in enumerate(reports) if rep is None]
    assert not missing, f"{len(missing)} deliveries never reported (first: {missing[:5]})"
    failed = [(i, rep[0]) for i, rep in enumerate(reports) if rep[0] is not None]
    assert not failed, f"{len(failed)} deliveries failed, first: {failed[:5]}"
    return reports


def confluent_consume(bootstrap: str, topic: str, expected: int, partition=0, conf=None,
                      timeout_s=120.0, settle_s=0.0):
    """Consumes one partition from the beginning with assign() (no subscription, no
    commits) until `expected` messages arrived or `timeout_s` passed, then keeps polling
    for `settle_s` more to catch extras. Returns the messages in order. Error events
    other than partition EOF are collected and asserted empty."""
    config = {"bootstrap.servers": bootstrap, "group.id": f"strand-test-{topic}",
              "enable.auto.commit": False, "enable.partition.eof": False,
              "auto.offset.reset": "error"}
    config.update(conf or {})
    consumer = Consumer(config)
    try:
        consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
        messages = []
        errors = []
        deadline = time.monotonic() + timeout_s
        settle_deadline = None
        while time.monotonic() < deadline:
            if len(messages) >= expected:
                if settle_deadline is None:
                    settle_deadline = time.monotonic() + settle_s
                if time.monotonic() >= settle_deadline:
                    break
            batch = consumer.consume(num_messages=10000, timeout=0.5)
            for m in batch:
                if m.error():
                    if m.error().code() != KafkaError._PARTITION_EOF:
                        errors.append(m.error())
                    continue
                messages.append(m)
        return messages, errors
    finally:
        consumer.close()


def confluent_consume_all(bootstrap, topic, expected, **kw):
    messages, errors = confluent_consume(bootstrap, topic, expected, **kw)
    assert not errors, f"consumer errors: {errors[:5]}"
    assert len(messages) == expected, (
        f"consumed {len(messages)} messages from {topic}, expected {expected}")
    return messages


# ---------------------------------------------------------------------------------------
# kafka-python

def kp_producer(bootstrap: str, **kw):
    from kafka import KafkaProducer
    # The broker refuses idempotent producers (no InitProducerId yet); kafka-python 3
    # turns idempotence on by default, so it is turned off explicitly.
    config = dict(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                  enable_idempotence=False, request_timeout_ms=30000)
    config.update(kw)
    return KafkaProducer(**config)


def kp_produce(bootstrap: str, topic: str, records, partition=0, timeout_s=120.0, **kw):
    """Produces with kafka-python; returns each record's RecordMetadata, in order."""
    producer = kp_producer(bootstrap, **kw)
    try:
        futures = []
        for r in records:
            futures.append(producer.send(topic, value=r.get("value"), key=r.get("key"),
                                         headers=r.get("headers"), partition=partition,
                                         timestamp_ms=r.get("timestamp")))
        producer.flush(timeout=timeout_s)
        return [f.get(timeout=timeout_s) for f in futures]
    finally:
        producer.close(timeout=10)


def kp_consume(bootstrap: str, topic: str, expected: int, partition=0, timeout_s=120.0):
    """kafka-python KafkaConsumer without a group: assign + seek_to_beginning."""
    from kafka import KafkaConsumer, TopicPartition as KTP
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                             enable_auto_commit=False, auto_offset_reset="earliest")
    try:
        tp = KTP(topic, partition)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        out = []
        deadline = time.monotonic() + timeout_s
        while len(out) < expected and time.monotonic() < deadline:
            polled = consumer.poll(timeout_ms=500, max_records=10000)
            for recs in polled.values():
                out.extend(recs)
        return out
    finally:
        consumer.close()


# ---------------------------------------------------------------------------------------
# kcat

def kcat(bootstrap: str, *args, input_bytes=None, timeout_s=60.0, check=True):
    cmd = ["kcat", "-b", bootstrap, *args]
    proc = subprocess.run(cmd, input=input_bytes, capture_output=True, timeout=timeout_s)
    if check:
        assert proc.returncode == 0, (
            f"{cmd} exited {proc.returncode}\nstdout: {proc.stdout[-2000:]!r}\n"
            f"stderr: {proc.stderr[-4000:]!r}")
    return proc


def kcat_partial(bootstrap: str, *args, timeout_s=20.0):
    """Runs kcat for at most `timeout_s`; returns (exit code or None if it was stopped,
    stdout, stderr). For consumers that may legitimately never reach the end."""
    # -u: unbuffered output, so nothing is lost when kcat has to be stopped. It is stopped
    # with SIGINT (it exits cleanly on it) and only killed if it ignores that.
    cmd = ["kcat", "-u", "-b", bootstrap, *args]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout_s)
        return proc.returncode, out, err
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate(timeout=10)
        return None, out, err


def complete_lines(out: bytes) -> list:
    """The newline-terminated lines of `out` (a stopped process may cut the last one)."""
    return out.split(b"\n")[:-1]

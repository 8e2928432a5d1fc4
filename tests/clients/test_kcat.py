"""kcat (librdkafka's command-line client) against the real broker."""

import re

from strandutil import contiguous, kcat


def test_kcat_metadata_lists_the_broker(broker):
    out = kcat(broker.bootstrap, "-L").stdout.decode()
    assert re.search(r"^ 1 brokers:$", out, re.M), out
    assert re.search(rf"^  broker 1 at 127\.0\.0\.1:{broker.port}\b", out, re.M), out
    assert re.search(r"^ 0 topics:$", out, re.M), out


def test_kcat_produce_consume_in_order(broker):
    lines = [f"message-{i}" for i in range(10)]
    kcat(broker.bootstrap, "-P", "-t", "t1", input_bytes=("\n".join(lines) + "\n").encode())

    meta = kcat(broker.bootstrap, "-L", "-t", "t1").stdout.decode()
    assert re.search(r'topic "t1" with 1 partitions:', meta), meta
    assert re.search(r"partition 0, leader 1, replicas: 1, isrs: 1", meta), meta

    out = kcat(broker.bootstrap, "-C", "-t", "t1", "-e", "-o", "beginning",
               "-f", "%p|%o|%s\n", timeout_s=60).stdout.decode()
    rows = [line.split("|") for line in out.splitlines()]
    assert [(p, v) for p, _, v in rows] == [("0", line) for line in lines], out
    contiguous(int(o) for _, o, _ in rows)

"""Hostile bytes against the real broker process: it closes the connection and stays up.

kafka-protocol 0.18 reserves a decoded array by the element count claimed on the wire; a
request of a few bytes claiming billions of elements would make the system allocator fail
and abort the process. The broker binary's allocator (src/large_alloc.rs) turns such
reservations into lazily committed mappings, so the decode fails on the short input and
only that connection closes.
"""

import socket
import struct
from pathlib import Path

from confluent_kafka.admin import AdminClient

REGRESSIONS = Path(__file__).resolve().parents[1] / "fuzz-regressions"


def metadata_claiming_topics(count: int) -> bytes:
    # Metadata v1: api_key=3, version=1, correlation_id=7, client_id=null, topics=[count]
    body = struct.pack(">hhih", 3, 1, 7, -1) + struct.pack(">i", count)
    return struct.pack(">i", len(body)) + body


def send_and_expect_close(port: int, frame: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(frame)
        s.settimeout(30)
        try:
            data = s.recv(4096)
        except ConnectionResetError:
            data = b""
        assert data == b"", f"expected the broker to close the connection, got {data!r}"


def test_huge_claimed_arrays_close_only_that_connection(broker):
    frames = [
        metadata_claiming_topics(0x7FFFFFFF),
        metadata_claiming_topics(0x033C0C00),
        (REGRESSIONS / "request" / "alter-configs-array-length-oom").read_bytes(),
    ]
    for frame in frames:
        send_and_expect_close(broker.port, frame)
        assert broker.is_alive(), f"broker died (exit code {broker.proc.poll()})"
    md = AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=30)
    assert list(md.brokers) == [1]

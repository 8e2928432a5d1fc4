"""Fixtures that run the real `strand` binary for third-party client tests.

Every test that uses the `broker` fixture gets its own broker process on a free
loopback port with its own temporary data directory; the `cluster` fixture gives three
brokers (node ids 1..3) that know each other through `--peers`. Each broker's stderr
goes to a file (kept across restarts); when a test fails, those files are attached to
the report. On teardown every broker still running gets SIGTERM and must exit with 0.

The binary is target/release/strand, or the path in the STRAND_BIN environment variable.
"""

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 30.0


def strand_bin() -> Path:
    path = Path(os.environ.get("STRAND_BIN", REPO_ROOT / "target" / "release" / "strand"))
    if not path.is_file() or not os.access(path, os.X_OK):
        pytest.fail(f"strand binary not found at {path} (build it with `cargo build --release` "
                    "or set STRAND_BIN)", pytrace=False)
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def port_accepts(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False


class BrokerProcess:
    """One strand broker: start, SIGTERM, SIGKILL and restart on the same port and dir."""

    def __init__(self, binary: Path, data_dir: Path, log_path: Path, port: int,
                 node_id: int = 1, peers: str = None, extra_args=None):
        self.binary = binary
        self.data_dir = data_dir
        self.log_path = log_path
        self.port = port
        self.node_id = node_id
        self.peers = peers
        self.extra_args = list(extra_args or [])
        self.proc = None
        self.starts = 0

    @property
    def bootstrap(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def _note(self, text: str) -> None:
        with open(self.log_path, "a") as f:
            f.write(f"----- [test harness {time.strftime('%H:%M:%S')}] {text} -----\n")

    def start(self) -> None:
        self.launch()
        self.wait_started()

    def launch(self) -> None:
        """Starts the process without waiting: a cluster's brokers wait for each other."""
        assert self.proc is None or self.proc.poll() is not None, "broker already running"
        self.starts += 1
        self._note(f"start #{self.starts}: listen {self.bootstrap}, data dir {self.data_dir}")
        args = [str(self.binary), "broker", "--listen", self.bootstrap,
                "--data-dir", str(self.data_dir), "--node-id", str(self.node_id)]
        if self.peers:
            args += ["--peers", self.peers]
        args += self.extra_args
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                cwd=str(self.data_dir.parent), env={**os.environ, "NO_COLOR": "1"},
            )
        finally:
            log.close()

    def wait_started(self) -> None:
        """Waits until this start logged "strand broker started" (registered with the
        cluster) and the listener accepts connections."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                raise AssertionError(f"broker exited with code {code} while starting\n"
                                     + self.log_text())
            if (self.log_text().count("strand broker started") >= self.starts
                    and port_accepts(self.port)):
                return
            time.sleep(0.05)
        self.proc.kill()
        self.proc.wait(10)
        raise AssertionError(f"broker did not start serving on {self.bootstrap} within "
                             f"{START_TIMEOUT_S}s\n" + self.log_text())

    def is_alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int:
        """SIGTERM; waits for the exit and asserts it was clean (exit code 0)."""
        assert self.proc is not None
        code = self.proc.poll()
        assert code is None, f"broker had already exited with code {code} before SIGTERM"
        self._note("SIGTERM")
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"broker did not exit within {STOP_TIMEOUT_S}s of SIGTERM")
        self._note(f"exited with code {code}")
        assert code == 0, f"broker exited with code {code} after SIGTERM (expected 0)"
        return code

    def signal(self, sig) -> None:
        assert self.is_alive(), "broker is not running"
        self._note(f"signal {sig!r}")
        self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL: an unclean stop."""
        assert self.is_alive(), "broker is not running"
        self._note("SIGKILL")
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(STOP_TIMEOUT_S)

    def restart(self, clean: bool = True) -> None:
        """Stops (SIGTERM if clean, else SIGKILL) when running, then starts again."""
        if self.is_alive():
            if clean:
                self.stop()
            else:
                self.kill()
        self.start()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError as e:
            return f"(no broker log: {e})"

    def partition_dir(self, topic: str, partition: int = 0) -> Path:
        return self.data_dir / f"{topic}-{partition}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    brokers = getattr(item, "_strand_brokers", [])
    if report.failed:
        for broker in brokers:
            text = broker.log_text()
            if len(brokers) > 1 and len(text) > 200_000:
                text = "...\n" + text[-200_000:]
            report.sections.append((f"strand broker log ({broker.log_path})", text))


def stop_at_teardown(b: BrokerProcess) -> None:
    if b.proc is not None:
        code = b.proc.poll()
        if code is not None and b.proc.returncode != -signal.SIGKILL:
            pytest.fail(f"broker {b.node_id} exited on its own with code {code} during the test")
        if code is None:
            b.stop()


def start_broker_with_config(request, tmp_path, config_text: str) -> BrokerProcess:
    """A started broker with a fresh data dir and `config_text` as its TOML config file;
    the caller stops it with `stop_at_teardown`."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    config = tmp_path / "strand.toml"
    config.write_text(config_text)
    b = BrokerProcess(strand_bin(), data_dir, tmp_path / "broker.log", free_port(),
                      extra_args=["--config", str(config)])
    request.node._strand_brokers = [b]
    b.start()
    return b


@pytest.fixture
def broker(request, tmp_path):
    """A running broker with a fresh data dir; stopped with SIGTERM (exit 0 asserted) after."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    b = BrokerProcess(strand_bin(), data_dir, tmp_path / "broker.log", free_port())
    request.node._strand_brokers = [b]
    b.start()
    yield b
    stop_at_teardown(b)


class Cluster:
    """Three brokers on loopback, node ids 1..3, each with its own Kafka and Raft port."""

    def __init__(self, brokers):
        self.brokers = {b.node_id: b for b in brokers}

    @property
    def bootstrap(self) -> str:
        return ",".join(b.bootstrap for b in self.brokers.values() if b.is_alive())

    def __getitem__(self, node_id: int) -> BrokerProcess:
        return self.brokers[node_id]


@pytest.fixture
def cluster(request, tmp_path):
    """Three running brokers of one cluster; each stopped with SIGTERM (exit 0) after."""
    ids = [1, 2, 3]
    peers = ",".join(f"{i}@{LOOPBACK}:{free_port()}" for i in ids)
    brokers = []
    for i in ids:
        data_dir = tmp_path / f"data{i}"
        data_dir.mkdir()
        brokers.append(BrokerProcess(strand_bin(), data_dir, tmp_path / f"broker{i}.log",
                                     free_port(), node_id=i, peers=peers))
    request.node._strand_brokers = brokers
    for b in brokers:
        b.launch()
    for b in brokers:
        b.wait_started()
    yield Cluster(brokers)
    for b in brokers:
        if b.is_alive():
            b._note("SIGTERM (teardown)")
            b.proc.send_signal(signal.SIGTERM)
    for b in brokers:
        stop_at_teardown_after_signal(b)


def stop_at_teardown_after_signal(b: BrokerProcess) -> None:
    if b.proc is None:
        return
    try:
        code = b.proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        b.proc.kill()
        b.proc.wait(10)
        pytest.fail(f"broker {b.node_id} did not exit within {STOP_TIMEOUT_S}s of SIGTERM")
    if code not in (0, -signal.SIGKILL):
        pytest.fail(f"broker {b.node_id} exited with code {code}")

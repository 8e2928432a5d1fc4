"""Fixtures that run the real `strand` binary for third-party client tests.

Every test that uses the `broker` fixture gets its own broker process on a free
loopback port with its own temporary data directory. The broker's stderr goes to a
file (kept across restarts); when a test fails, that file is attached to the report.
On teardown the broker gets SIGTERM and must exit with code 0.

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

    def __init__(self, binary: Path, data_dir: Path, log_path: Path, port: int):
        self.binary = binary
        self.data_dir = data_dir
        self.log_path = log_path
        self.port = port
        self.proc = None
        self.starts = 0

    @property
    def bootstrap(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def _note(self, text: str) -> None:
        with open(self.log_path, "a") as f:
            f.write(f"----- [test harness {time.strftime('%H:%M:%S')}] {text} -----\n")

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "broker already running"
        self.starts += 1
        self._note(f"start #{self.starts}: listen {self.bootstrap}, data dir {self.data_dir}")
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                [str(self.binary), "broker", "--listen", self.bootstrap,
                 "--data-dir", str(self.data_dir)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                cwd=str(self.data_dir.parent), env={**os.environ, "NO_COLOR": "1"},
            )
        finally:
            log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                raise AssertionError(f"broker exited with code {code} while starting\n"
                                     + self.log_text())
            if port_accepts(self.port):
                return
            time.sleep(0.05)
        self.proc.kill()
        self.proc.wait(10)
        raise AssertionError(f"broker did not accept connections on {self.bootstrap} within "
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
    broker = getattr(item, "_strand_broker", None)
    if broker is not None and report.failed:
        report.sections.append((f"strand broker log ({broker.log_path})", broker.log_text()))


@pytest.fixture
def broker(request, tmp_path):
    """A running broker with a fresh data dir; stopped with SIGTERM (exit 0 asserted) after."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    b = BrokerProcess(strand_bin(), data_dir, tmp_path / "broker.log", free_port())
    request.node._strand_broker = b
    b.start()
    yield b
    if b.proc is not None:
        code = b.proc.poll()
        if code is not None and b.proc.returncode != -signal.SIGKILL:
            pytest.fail(f"broker exited on its own with code {code} during the test")
        if code is None:
            b.stop()

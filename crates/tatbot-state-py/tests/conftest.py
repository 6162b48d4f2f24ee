"""Fixtures: private redis-server processes on free loopback ports, the CLI binary, and a raw
redis-py client for byte-level checks and hostile writes.

Each test gets its own redis-server in a temporary directory (persistence off unless asked),
started and waited for here and killed at the end, as the Rust testkit does. No mocks.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator, List, Optional

import pytest

import tatbot_state

ROOT = Path(__file__).resolve().parents[3]
REDIS_SERVER = shutil.which("redis-server")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(condition, timeout: float = 10.0, interval: float = 0.01) -> bool:
    """Polls ``condition`` until it is true or ``timeout`` passes; answers whether it became true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return bool(condition())


class RedisServer:
    """A redis-server on 127.0.0.1:port with its own directory; ``kill`` is SIGKILL."""

    def __init__(self, directory: Path, persistence: bool = False) -> None:
        if REDIS_SERVER is None:
            pytest.fail("redis-server is not installed; run scripts/install-deps.sh --test (apt-get install redis-server)")
        self.host = "127.0.0.1"
        self.port = free_port()
        self.dir = directory
        self.persistence = persistence
        self.process: Optional[subprocess.Popen] = None
        self.start()

    def config(self) -> str:
        lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            "daemonize no",
            f'dir "{self.dir}"',
            f'logfile "{self.dir / "redis.log"}"',
            'save ""',
            "appendonly yes" if self.persistence else "appendonly no",
            "appendfsync everysec",
            # As the project's config: a cut AOF is repaired before a restart, never loaded half.
            "aof-load-truncated no",
        ]
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        conf = self.dir / "redis.conf"
        conf.write_text(self.config())
        self.process = subprocess.Popen([REDIS_SERVER, str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not wait_until(self.answers, timeout=10):
            log = (self.dir / "redis.log").read_text(errors="replace")[-2000:]
            self.kill()
            pytest.fail(f"redis-server on port {self.port} did not answer PING within 10 s; log:\n{log}")

    def answers(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL, as a crash or a power cut."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def restart(self) -> None:
        """Starts again on the same port and directory (the AOF, when on, is replayed), after
        repairing an AOF the kill cut inside a write (``tatbot-state server repair``), as
        ``server start`` does: Redis 7.0 would load half a script and merge it with later
        writes."""
        self.kill()
        if self.persistence:
            command = [str(cli_binary()), "server", "repair", "--data", str(self.dir)]
            try:
                repaired = subprocess.run(command, capture_output=True, text=True, timeout=60)
            except subprocess.TimeoutExpired:
                pytest.fail(f"repairing the AOF in {self.dir} took over 60 s: {' '.join(command)}")
            if repaired.returncode != 0:
                pytest.fail(
                    f"repairing the AOF in {self.dir} failed (exit {repaired.returncode}): {repaired.stderr.strip()}"
                )
        self.start()

    def cli_args(self) -> List[str]:
        return ["--host", self.host, "--port", str(self.port)]


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path) -> Iterator[None]:
    """No REDIS_* variable, env file or Hydra YAML of the machine leaks into a test, and the
    process's one StateManager is forgotten between tests."""
    for name in list(os.environ):
        if name.startswith("REDIS_") or name == "TATBOT_ENV_FILE":
            monkeypatch.delenv(name, raising=False)
    empty_env = tmp_path / "empty.env"
    empty_env.write_text("")
    monkeypatch.setenv("TATBOT_ENV_FILE", str(empty_env))
    monkeypatch.chdir(tmp_path)
    tatbot_state.StateManager.reset_instance()
    yield
    tatbot_state.StateManager.reset_instance()


@pytest.fixture
def redis_server(tmp_path) -> Iterator[RedisServer]:
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory)
    yield server
    server.kill()


@pytest.fixture
def persistent_redis(tmp_path) -> Iterator[RedisServer]:
    """A redis-server with the AOF on (everysec), as the fleet runs it."""
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory, persistence=True)
    yield server
    server.kill()


@pytest.fixture
def raw(redis_server):
    """A plain redis-py client of the same server: the independent reader and hostile writer."""
    redis = pytest.importorskip("redis", reason="redis-py is installed by scripts/test.sh")
    client = redis.Redis(host=redis_server.host, port=redis_server.port, decode_responses=True)
    yield client
    client.close()


def cli_binary() -> Path:
    path = Path(os.environ.get("TATBOT_STATE_BIN", ROOT / "target" / "debug" / "tatbot-state"))
    if not path.exists():
        pytest.fail(f"{path} is missing; build it first: cargo build -p tatbot-state-cli")
    return path


@pytest.fixture
def cli(redis_server):
    """Runs the Rust CLI against the test's server; answers the completed process."""

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [str(cli_binary()), *redis_server.cli_args(), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"tatbot-state {' '.join(args)} exited {done.returncode}: {done.stderr}")
        return done

    return run

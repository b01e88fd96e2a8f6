"""A real HAProxy (Debian's ``haproxy``) in front of simpletcp instances, for the tests.

HAProxy listens on a socket the test binds on an ephemeral loopback port and hands it
(``bind fd@N``), so there is no port to guess; its admin socket reports what its health
checks think of each server. Tests that use it skip, saying why, where the binary is
missing (``.ci/run`` installs it when it runs as root).
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from typing import Dict, List, Optional, Tuple

import pytest

from support import TIMEOUT, end_process

#: How often HAProxy checks each server, in ms; one failed check marks it down and one
#: success up, so a test sees a change within a few of these.
CHECK_INTERVAL_MS = 100


def haproxy_binary() -> str:
    """The haproxy program, or skip the test."""
    path = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    if path is None:
        pytest.skip("needs HAProxy (Debian: apt-get install haproxy; .ci/run installs it "
                    "as root)")
    return path


class HAProxy:
    """HAProxy balancing TCP connections (round robin) over ``servers``: a list of
    (name, port, option) where option is "send-proxy" or "send-proxy-v2"."""

    def __init__(self, servers: List[Tuple[str, int, str]]) -> None:
        binary = haproxy_binary()
        # The admin socket's path must fit in sun_path: a short directory of its own.
        self.directory = tempfile.mkdtemp(prefix="haproxy-")
        self.admin_path = f"{self.directory}/admin.sock"
        self.frontend = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.frontend.bind(("127.0.0.1", 0))
        self.frontend.listen(128)
        self.port = self.frontend.getsockname()[1]
        self.names = [name for name, _, _ in servers]
        config = f"{self.directory}/haproxy.cfg"
        with open(config, "w") as file:
            file.write(self.config(servers))
        self.child = subprocess.Popen(
            [binary, "-db", "-f", config], pass_fds=(self.frontend.fileno(),),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)
        try:
            self.wait_for_status({name: "UP" for name in self.names})
        except BaseException:
            self.close()
            raise

    def config(self, servers: List[Tuple[str, int, str]]) -> str:
        lines = [
            "global",
            f"    stats socket {self.admin_path} mode 600 level admin",
            "defaults",
            "    mode tcp",
            "    timeout connect 2s",
            "    timeout client 30s",
            "    timeout server 30s",
            # A server that refuses (stopped) is retried, each time on another server.
            "    retries 3",
            "    option redispatch 1",
            "frontend clients",
            f"    bind fd@{self.frontend.fileno()}",
            "    default_backend simpletcp",
            "backend simpletcp",
            "    balance roundrobin",
        ]
        for name, port, option in servers:
            # check-send-proxy: the health check's connection starts with a header too,
            # as a server with proxy_protocol=True expects of every connection.
            lines.append(f"    server {name} 127.0.0.1:{port} {option} check check-send-proxy "
                         f"inter {CHECK_INTERVAL_MS} fall 1 rise 1")
        return "\n".join(lines) + "\n"

    def admin(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as admin:
            admin.settimeout(TIMEOUT)
            admin.connect(self.admin_path)
            admin.sendall(command.encode() + b"\n")
            chunks = []
            while True:
                chunk = admin.recv(65536)
                if not chunk:
                    return b"".join(chunks).decode()
                chunks.append(chunk)

    def statuses(self) -> Dict[str, str]:
        """Each server's status as HAProxy's health checks see it: "UP", "DOWN", ..."""
        lines = self.admin("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        name_column, status_column = header.index("svname"), header.index("status")
        statuses = {}
        for line in lines[1:]:
            fields = line.split(",")
            if len(fields) > status_column and fields[name_column] in self.names:
                statuses[fields[name_column]] = fields[status_column].split()[0]
        return statuses

    def wait_for_status(self, wanted: Dict[str, str], timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        seen: Optional[Dict[str, str]] = None
        while time.monotonic() < deadline:
            if self.child.poll() is not None:
                raise AssertionError(f"haproxy exited: {self.child.stdout.read()}")
            try:
                seen = self.statuses()
            except (FileNotFoundError, ConnectionRefusedError):
                seen = None  # not listening on its admin socket yet
            if seen is not None and all(seen.get(name) == status
                                        for name, status in wanted.items()):
                return
            time.sleep(0.05)
        raise AssertionError(f"HAProxy's servers: expected {wanted}, saw {seen}")

    def close(self) -> None:
        end_process(self.child)
        self.frontend.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> "HAProxy":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

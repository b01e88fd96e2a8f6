"""Soak: a million requests over a thousand connections, no descriptor or memory growth.

The full size runs with ``pytest -m soak``; CI runs it smaller through
SIMPLETCP_SOAK_REQUESTS / SIMPLETCP_SOAK_CONNECTIONS. A small version of the same
check always runs. The load comes from bench/loadgen.c, which checks every echoed byte.
"""
import json
import os
import socket
import subprocess

import pytest

from support import child_server, open_descriptors, rss_kib


def _open_fds(pid):
    return len(open_descriptors(pid))


def _idle_fds(pid, port):
    """The server's descriptors with no connection, counted once run() is serving.

    The port is printed before run() opens what it needs (the signal wake-up pipe), so
    counting at once could race it; an echo round trip proves run() is in its loop.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=10) as probe:
        probe.sendall(b"?")
        assert probe.recv(1) == b"?"
        return _open_fds(pid) - 1  # less the probe's own connection


def _load(loadgen, port, connections, requests):
    result = subprocess.run(
        [str(loadgen), "--port", str(port), "--connections", str(connections), "--size", "256",
         "--requests", str(requests), "--warmup", "0", "--duration", "600"],
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def _soak(loadgen, requests, connections):
    with child_server(None, descriptors="hard") as (child, port):
        fds_idle = _idle_fds(child.pid, port)
        # Warm-up: allocator pools, buffers and the connection table reach their size.
        _load(loadgen, port, connections, max(requests // 20, connections))
        rss_warm = rss_kib(child.pid)
        report = _load(loadgen, port, connections, requests)
        assert report["errors_total"] == 0, report["errors"]
        assert report["requests"] >= requests
        assert report["connections_established"] == connections
        rss_end = rss_kib(child.pid)
        # The load generator has closed its connections; the server's must be gone too.
        for _ in range(200):
            if _open_fds(child.pid) == fds_idle:
                break
            subprocess.run(["sleep", "0.05"])
        assert _open_fds(child.pid) == fds_idle, (
            f"descriptors leaked: {fds_idle} idle, {_open_fds(child.pid)} now")
        print(f"soak: {report['requests']} requests over {connections} connections, "
              f"{report['requests_per_s']:.0f}/s; server RSS {rss_warm} -> {rss_end} KiB; "
              f"descriptors {fds_idle} before and after")
        assert rss_end - rss_warm < 4096, f"RSS grew by {rss_end - rss_warm} KiB"
        assert child.poll() is None


@pytest.mark.timeout(120)
def test_small_soak(loadgen):
    _soak(loadgen, requests=20_000, connections=100)


@pytest.mark.soak
@pytest.mark.timeout(1800)
def test_soak(loadgen):
    requests = int(os.environ.get("SIMPLETCP_SOAK_REQUESTS", 1_000_000))
    connections = int(os.environ.get("SIMPLETCP_SOAK_CONNECTIONS", 1000))
    _soak(loadgen, requests, connections)

"""Every backend is fair: a connection that becomes ready is served in the next turn
of the loop, however many others are busy."""
import resource
import socket
import time

import pytest

from support import backend, connect, recv_exactly, serve  # noqa: F401

pytestmark = pytest.mark.timeout(120)

BUSY = 600  # more than one poller batch used to hold (512)


@pytest.fixture
def many_descriptors():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2 * BUSY + 200  # both ends of each connection live in this process
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {wanted}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_newcomer_is_answered_while_hundreds_of_connections_stay_busy(serve, many_descriptors):
    # With 4-byte reads, each busy connection's 64 KiB keeps it ready for 1,024 turns of
    # 16 reads. The newcomer must be answered in the turn after its PING arrives, long
    # before the busy connections have drained: counted in bytes the server had read
    # from them by then, not in seconds, so a slow machine does not change the verdict.
    busy_bytes = [0]
    read_before_the_ping = []

    def pong(queue, data):
        if data == b"PING":
            read_before_the_ping.append(busy_bytes[0])
            queue.put(b"PONG")
        else:
            busy_bytes[0] += len(data)

    server = serve(pong, recv_bytes=4)
    busy = [connect(server) for _ in range(BUSY)]
    try:
        for client in busy:
            client.sendall(b"x" * 65536)
        time.sleep(0.2)  # every busy connection is ready now
        with connect(server) as newcomer:
            newcomer.sendall(b"PING")
            assert recv_exactly(newcomer, 4) == b"PONG"
        total = BUSY * 65536
        print(f"{read_before_the_ping[0]} of {total} busy bytes read before the PING")
        # Before, poll served only the first 512 ready descriptors of each turn: the
        # newcomer waited until most busy connections had drained (85% of their bytes).
        assert read_before_the_ping[0] < total // 5, (
            f"{read_before_the_ping[0]} of {total} busy bytes were read before the PING")
    finally:
        for client in busy:
            client.close()

"""Large messages: the server reads them in large pieces, and the callback still gets
every byte, in order, in pieces of at most ``recv_bytes`` (README, "recv_bytes").

What a callback does in the middle of a large read decides what happens to the rest of
it: after ``queue.shutdown()`` or an exception, the rest is dropped (as anything the
peer sends once a close began); after ``server.stop()`` the rest of that read is still
delivered, and reading stops there."""
import threading
import time

import pytest

from support import TIMEOUT, connect, recv_exactly, recv_until_eof

pytestmark = pytest.mark.timeout(60)

MiB = 1024 * 1024
ONE_READ = 256 * 1024  # the most the server reads at once (README, "recv_bytes")


def pattern(size):
    """Bytes in which any misplaced, repeated or missing piece shows."""
    return b"".join(i.to_bytes(4, "big") for i in range(size // 4))


class Recorder:
    """An echo callback that remembers the size of each piece it was given."""

    def __init__(self):
        self.sizes = []

    def __call__(self, queue, data):
        self.sizes.append(len(data))
        queue.put(data)


@pytest.mark.parametrize("recv_bytes", [None, 1000, 300 * 1024])
def test_a_mebibyte_arrives_whole_in_order_in_pieces_of_at_most_recv_bytes(serve, recv_bytes):
    recorder = Recorder()
    keywords = {} if recv_bytes is None else {"recv_bytes": recv_bytes}
    server = serve(recorder, **keywords)
    payload = pattern(MiB)
    with connect(server, timeout=30) as client:
        writer = threading.Thread(target=client.sendall, args=(payload,))
        writer.start()
        assert recv_exactly(client, len(payload)) == payload
        writer.join(TIMEOUT)
    assert sum(recorder.sizes) == len(payload)
    assert max(recorder.sizes) <= server.recv_bytes


def test_pipelined_small_requests_behind_a_large_one_are_each_answered(serve):
    requests = {}

    def answer_lines(queue, data):
        # A line protocol over whatever pieces arrive: each line is answered with its
        # length, so a line lost, split wrongly or merged shows in the replies.
        pending = requests.get(queue, b"") + data
        *lines, pending = pending.split(b"\n")
        requests[queue] = pending
        for line in lines:
            queue.put(b"%d\n" % len(line))

    server = serve(answer_lines)
    large = b"x" * MiB + b"\n"
    small = b"".join(b"ping %d\n" % i for i in range(100))
    expected = b"%d\n" % MiB + b"".join(b"%d\n" % len(b"ping %d" % i) for i in range(100))
    with connect(server, timeout=30) as client:
        client.sendall(large + small)
        assert recv_exactly(client, len(expected)) == expected


class HeldServer:
    """The loop held in the first callback until the client has sent a flood, so that
    the server's next read finds far more than one slice waiting: the callback is
    then called with slices of that one read, in a row."""

    def __init__(self, serve, on_slice, recv_bytes=1024):
        self.release = threading.Event()
        self.held = threading.Event()
        self.on_slice = on_slice
        self.server = serve(self, recv_bytes=recv_bytes)

    def __call__(self, queue, data):
        if data == b"hold":
            self.held.set()
            self.release.wait(TIMEOUT)
            return
        self.on_slice(queue, data)

    def flood(self, client, payload):
        client.sendall(b"hold")
        assert self.held.wait(TIMEOUT)
        threading.Thread(target=send_until_closed, args=(client, payload), daemon=True).start()
        # Meanwhile the kernel buffers what it can for the held loop (on a slow machine
        # perhaps less: the reads are then smaller, and the verdicts the same).
        time.sleep(0.3)
        self.release.set()


def send_until_closed(client, payload):
    try:
        client.sendall(payload)
    except OSError:
        pass  # the server closed the connection, as the test wants


@pytest.mark.parametrize("how", ["shutdown", "raise"])
def test_a_callback_that_closes_midway_through_a_read_gets_nothing_more(serve, how, caplog):
    given = []
    closed_at = []
    late = []

    def on_slice(queue, data):
        if closed_at:
            if queue is closed_at[1]:
                late.append(len(data))  # a callback after the close began: wrong
            else:
                queue.put(b"%d;" % len(data))  # a newcomer
            return
        given.append(data)
        queue.put(b"%d;" % len(data))
        if len(given) == 10:
            closed_at[:] = [sum(map(len, given)), queue]
            if how == "shutdown":
                queue.shutdown()
            else:
                raise RuntimeError("enough")

    held = HeldServer(serve, on_slice)
    payload = pattern(4 * MiB)
    with connect(held.server, timeout=30) as client:
        held.flood(client, payload)
        replies = recv_until_eof(client)  # the close: what was put, then EOF
    assert late == []
    assert replies == b"1024;" * 10
    assert b"".join(given) == payload[:10 * 1024]
    assert held.server.running
    with connect(held.server) as newcomer:  # the server serves on
        newcomer.sendall(b"x")
        assert recv_exactly(newcomer, 2) == b"1;"


def test_stop_midway_through_a_read_delivers_the_rest_of_that_read_only(serve):
    given = []
    stopped_at = []

    def on_slice(queue, data):
        given.append(data)
        queue.put(data)
        if len(given) == 10:
            stopped_at.append(sum(map(len, given)))
            held.server.stop()

    held = HeldServer(serve, on_slice)
    payload = pattern(8 * MiB)
    with connect(held.server, timeout=30) as client:
        held.flood(client, payload)
        echoed = recv_until_eof(client)
    delivered = b"".join(given)
    # Every byte read before the stop took effect, in order, echoed; nothing after.
    assert echoed == delivered == payload[:len(delivered)]
    assert stopped_at[0] <= len(delivered) <= stopped_at[0] + ONE_READ
    assert len(delivered) < len(payload)


def test_pieces_a_callback_keeps_are_never_refilled_by_later_reads(serve):
    # The loop reuses the bytes objects of pieces sent and let go of; one the callback
    # still holds (here every third) must keep what it was given, however many reads
    # follow, and every piece must hash as its own contents, not as a reused object's.
    kept = []
    wrong_hashes = []

    def keep_some(queue, data):
        if hash(data) != hash(bytes(bytearray(data))):
            wrong_hashes.append(len(data))
        if len(kept) % 3 == 0:
            kept.append((queue.received, data))
        else:
            kept.append((queue.received, None))
        queue.received += len(data)
        queue.put(data)

    def on_connect(queue):
        queue.received = 0

    server = serve(keep_some, on_connect=on_connect)
    payload = pattern(4 * MiB)
    with connect(server, timeout=30) as client:
        writer = threading.Thread(target=client.sendall, args=(payload,))
        writer.start()
        assert recv_exactly(client, len(payload)) == payload
        writer.join(TIMEOUT)
    held = [(offset, data) for offset, data in kept if data is not None]
    assert len(held) > 100
    for offset, data in held:
        assert data == payload[offset:offset + len(data)], f"piece at {offset} changed"
    assert wrong_hashes == []

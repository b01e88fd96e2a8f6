"""The callback and queue contract: what is put into the queue reaches the peer, whole."""
import queue as queue_module
import threading

import pytest

from simpletcp.tcpserver import ShutDown
from support import HandOff, connect, echo, recv_exactly, recv_until_eof

pytestmark = pytest.mark.timeout(60)


def test_readme_echo(serve):
    server = serve(echo)
    with connect(server) as client:
        for message in (b"hello", b"x" * 1000, bytes(range(256))):
            client.sendall(message)
            assert recv_exactly(client, len(message)) == message


def test_ip_callback_gets_the_peer_address(serve):
    def reply_ip(ip, queue, data):
        queue.put(ip.encode())

    server = serve(reply_ip)
    with connect(server) as client:
        client.sendall(b"who am i")
        assert client.recv(100) == b"127.0.0.1"


def test_queue_is_a_queue_one_per_connection(serve):
    queues = []

    def remember(queue, data):
        queues.append(queue)
        queue.put(b"ok")

    server = serve(remember)
    with connect(server) as first, connect(server) as second:
        for client in (first, second, first):
            client.sendall(b"?")
            assert client.recv(10) == b"ok"
    assert all(isinstance(q, queue_module.Queue) for q in queues)
    assert queues[0] is queues[2]
    assert queues[0] is not queues[1]


def test_several_puts_arrive_in_order(serve):
    def count(queue, data):
        for i in range(100):
            queue.put(b"%d," % i)

    server = serve(count)
    expected = b"".join(b"%d," % i for i in range(100))
    with connect(server) as client:
        client.sendall(b"go")
        assert recv_exactly(client, len(expected)) == expected


def test_bytes_like_objects_are_accepted_and_snapshotted(serve):
    def various(queue, data):
        buffer = bytearray(b"bytearray|")
        queue.put(buffer)
        buffer[:] = b"CHANGED!!|"  # must not change what is sent
        queue.put(memoryview(b"memoryview|"))
        queue.put_nowait(b"nowait")
        queue.put(b"")  # nothing to send, not an error

    server = serve(various)
    expected = b"bytearray|memoryview|nowait"
    with connect(server) as client:
        client.sendall(b"go")
        assert recv_exactly(client, len(expected)) == expected


@pytest.mark.parametrize("bad", ["text", 42, None, object()])
def test_wrong_type_raises_typeerror_in_the_callback(serve, bad):
    def put_bad(queue, data):
        try:
            queue.put(bad)
        except TypeError as exc:
            queue.put(b"TypeError: " + str(exc).encode())

    server = serve(put_bad)
    with connect(server) as client:
        client.sendall(b"go")
        reply = client.recv(1000)
    assert reply.startswith(b"TypeError: queue.put() takes a bytes-like object")


def test_a_100_mb_reply_arrives_whole(serve):
    payload = bytes(range(256)) * (100 * 1024 * 1024 // 256)

    def big(queue, data):
        queue.put(payload)

    server = serve(big)
    with connect(server, timeout=30) as client:
        client.sendall(b"go")
        assert recv_exactly(client, len(payload)) == payload


def test_pipelined_bulk_echo_with_partial_sends(serve):
    # The client writes 20 MB before reading anything: the server's sends fill the
    # socket buffers and go out in many partial pieces.
    payload = bytes(i * 7 % 251 for i in range(20 * 1024 * 1024))
    server = serve(echo)
    with connect(server, timeout=30) as client:
        writer = threading.Thread(target=client.sendall, args=(payload,))
        writer.start()
        received = recv_exactly(client, len(payload))
        writer.join()
    assert received == payload


def test_put_from_another_thread_is_sent_without_more_client_data(serve):
    hand_off = HandOff()
    server = serve(hand_off)
    with connect(server) as client:
        client.sendall(b"request")
        queue = hand_off.first_queue()
        # Much later, from another thread, with the loop asleep in the poller:
        worker = threading.Timer(0.2, lambda: queue.put(b"late reply"))
        worker.start()
        assert recv_exactly(client, 10) == b"late reply"
        worker.join()


def test_many_puts_from_many_threads_all_arrive(serve):
    hand_off = HandOff()
    server = serve(hand_off)
    with connect(server) as client:
        client.sendall(b"go")
        queue = hand_off.first_queue()

        def produce(thread_id):
            for i in range(500):
                queue.put(b"%02d:%04d;" % (thread_id, i))

        threads = [threading.Thread(target=produce, args=(t,)) for t in range(8)]
        for thread in threads:
            thread.start()
        received = recv_exactly(client, 8 * 500 * 8)
        for thread in threads:
            thread.join()
    items = received.split(b";")[:-1]
    assert len(items) == 4000
    for thread_id in range(8):
        mine = [item for item in items if item.startswith(b"%02d:" % thread_id)]
        assert mine == [b"%02d:%04d" % (thread_id, i) for i in range(500)]


def test_put_with_wrong_type_from_another_thread_raises_there(serve):
    hand_off = HandOff()
    server = serve(hand_off)
    with connect(server) as client:
        client.sendall(b"go")
        queue = hand_off.first_queue()
        with pytest.raises(TypeError, match="bytes-like"):
            queue.put("not bytes")
        with pytest.raises(ValueError, match="timeout"):
            queue.put(b"x", timeout=-1)
        queue.put(b"still fine")
        assert recv_exactly(client, 10) == b"still fine"


def test_callback_can_close_its_connection_after_the_reply(serve):
    def reply_and_close(queue, data):
        queue.put(b"bye")
        queue.shutdown()
        with pytest.raises(ShutDown):
            queue.put(b"too late")

    server = serve(reply_and_close)
    with connect(server) as client:
        client.sendall(b"hi")
        assert recv_until_eof(client) == b"bye"


def test_shutdown_immediate_drops_what_is_queued(serve):
    def drop_and_close(queue, data):
        queue.put(b"never sent")
        queue.shutdown(immediate=True)

    server = serve(drop_and_close)
    with connect(server) as client:
        client.sendall(b"hi")
        assert recv_until_eof(client) == b""


def test_queue_reports_pending_output_and_refuses_get(serve):
    seen = {}

    def inspect_queue(queue, data):
        seen["empty_before"] = queue.empty()
        queue.put(b"abc")
        queue.put(b"de")
        seen["qsize"] = queue.qsize()
        seen["full"] = queue.full()
        with pytest.raises(NotImplementedError):
            queue.get_nowait()

    server = serve(inspect_queue)
    with connect(server) as client:
        client.sendall(b"go")
        assert recv_exactly(client, 5) == b"abcde"
    assert seen == {"empty_before": True, "qsize": 2, "full": False}


def test_callback_can_reply_to_another_connection(serve):
    # A chat-style broadcast: a put into another connection's queue from a callback.
    members = []

    def broadcast(queue, data):
        if data == b"join":
            members.append(queue)
            queue.put(b"joined;")
            return
        for member in members:
            member.put(data)

    server = serve(broadcast)
    with connect(server) as alice, connect(server) as bob, connect(server) as carol:
        for client in (alice, bob):
            client.sendall(b"join")
            assert recv_exactly(client, 7) == b"joined;"
        carol.sendall(b"hello all")
        assert recv_exactly(alice, 9) == b"hello all"
        assert recv_exactly(bob, 9) == b"hello all"


def test_recv_bytes_caps_each_callback(serve):
    sizes = []

    def measure(queue, data):
        sizes.append(len(data))
        queue.put(data)

    server = serve(measure, recv_bytes=16)
    payload = b"z" * 1000
    with connect(server) as client:
        client.sendall(payload)
        assert recv_exactly(client, 1000) == payload
    assert max(sizes) <= 16 and sum(sizes) == 1000


def test_data_a_callback_keeps_never_changes(serve):
    kept = []

    def keep(queue, data):
        kept.append(data)
        queue.put(b"k")

    server = serve(keep)
    messages = [bytes([65 + i]) * 1024 for i in range(20)]  # same size, new contents
    with connect(server) as client:
        for message in messages:
            client.sendall(message)
            assert client.recv(1) == b"k"
    assert kept == messages


def test_data_hash_matches_its_contents_every_time(serve):
    # The loop may reuse a bytes object nobody holds any more; a hash cached for its
    # old contents must not survive.
    def hash_check(queue, data):
        queue.put(b"1" if hash(data) == hash(bytes(bytearray(data))) else b"0")

    server = serve(hash_check)
    with connect(server) as client:
        for i in range(50):
            client.sendall(bytes([i]) * 64)
            assert client.recv(1) == b"1"

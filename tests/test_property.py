"""Property-based: whatever the chunking, timing and concurrency, every byte comes back in order."""
import socket
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support import echo


pytestmark = pytest.mark.timeout(120)

# A conversation: the bytes one client sends, cut into chunks, with pauses between.
chunked_stream = st.lists(
    st.tuples(st.binary(min_size=1, max_size=6000), st.sampled_from([0, 0, 0, 0.001, 0.003])),
    min_size=1, max_size=12,
)
conversations = st.lists(chunked_stream, min_size=1, max_size=5)
SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def _talk(port, chunks, results, index):
    expected = b"".join(chunk for chunk, _ in chunks)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        def write():
            for chunk, pause in chunks:
                client.sendall(chunk)
                if pause:
                    time.sleep(pause)

        writer = threading.Thread(target=write)
        writer.start()
        received = bytearray()
        while len(received) < len(expected):
            piece = client.recv(65536)
            if not piece:
                break
            received += piece
        writer.join()
    results[index] = bytes(received)


def _converse(server, conversation):
    results = [None] * len(conversation)
    threads = [threading.Thread(target=_talk, args=(server.port, chunks, results, i))
               for i, chunks in enumerate(conversation)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


@pytest.fixture
def echo_server(serve):
    return serve(echo, recv_bytes=1000)


@SETTINGS
@given(conversation=conversations)
def test_echo_returns_every_byte_in_order(echo_server, conversation):
    results = _converse(echo_server, conversation)
    for chunks, received in zip(conversation, results):
        assert received == b"".join(chunk for chunk, _ in chunks)


def _xor(data):
    return bytes(byte ^ 0x5A for byte in data)


@pytest.fixture
def split_reply_server(serve):
    # A stream-safe transformation, replied in uneven pieces: many puts per callback.
    def xor_in_pieces(queue, data):
        reply = _xor(data)
        cut = 1
        while reply:
            queue.put(reply[:cut])
            reply = reply[cut:]
            cut = cut * 3 + 1

    return serve(xor_in_pieces, recv_bytes=777)


@SETTINGS
@given(conversation=conversations)
def test_many_puts_per_callback_keep_stream_order(split_reply_server, conversation):
    results = _converse(split_reply_server, conversation)
    for chunks, received in zip(conversation, results):
        assert received == _xor(b"".join(chunk for chunk, _ in chunks))

"""examples/chat: the line-based chat, checked with nc and socat as users at terminals,
and with hostile clients, on every backend."""
import socket
import time

import pytest

from support import (TIMEOUT, ProgramClient, assert_stop_does_not_wait_for_idle_clients,
                     connect, load_example, recv_exactly, recv_until_eof, reset, wait_for)

chat = load_example("chat")


def serve_chat(serve, **keywords):
    """A chat server, serving: (server, the ChatServer)."""
    app = chat.ChatServer()
    app.server = serve(app.on_line, **app.keywords(), **keywords)
    return app.server, app


@pytest.fixture
def chat_server(serve):
    return serve_chat(serve)


@pytest.fixture
def terminals(chat_server, netcat, socat):
    """Two users: one on nc, one on socat."""
    server, _ = chat_server
    clients = [ProgramClient([netcat, "127.0.0.1", str(server.port)]),
               ProgramClient([socat, "-", f"TCP:127.0.0.1:{server.port}"])]
    yield clients
    for client in clients:
        client.kill()


def join(sock, nick):
    """Send `nick` as a new client's first line: the reply (the greeting skipped)."""
    assert read_line(sock) == b"* hello: send your nickname\n"
    return retry(sock, nick)


def retry(sock, nick):
    """Send another nickname after a refusal: the reply."""
    sock.sendall(nick.encode() + b"\n")
    return read_line(sock)


def read_line(sock):
    line = b""
    while not line.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            raise EOFError(line)
        line += chunk
    return line


def test_two_users_on_nc_and_socat_see_each_other(terminals):
    alice, bob = terminals
    assert alice.expect(b"\n") == b"* hello: send your nickname\n"  # the server speaks first
    assert bob.expect(b"\n") == b"* hello: send your nickname\n"
    alice.send(b"alice\n")
    assert alice.expect(b"\n") == b"* welcome, alice; online: nobody else\n"
    bob.send(b"bob\n")
    assert bob.expect(b"\n") == b"* welcome, bob; online: alice\n"
    assert alice.expect(b"\n") == b"* bob joined\n"
    alice.send(b"hello, bob\n")
    assert bob.expect(b"\n") == b"<alice> hello, bob\n"
    bob.send(b"hi alice\r\n")  # a terminal that ends lines with CRLF
    assert alice.expect(b"\n") == b"<bob> hi alice\n"
    bob.send(b"/who\n")
    assert bob.expect(b"\n") == b"* online: alice, bob\n"
    alice.send(b"/nick alicia\n")
    assert bob.expect(b"\n") == b"* alice is now alicia\n"
    assert alice.expect(b"\n") == b"* alice is now alicia\n"


def test_a_user_who_leaves_is_announced(terminals):
    alice, bob = terminals
    alice.expect(b"* hello: send your nickname\n")
    alice.send(b"alice\n")
    alice.expect(b"\n")
    bob.expect(b"* hello: send your nickname\n")
    bob.send(b"bob\n")
    bob.expect(b"\n")
    alice.expect(b"* bob joined\n")
    bob.kill()  # the terminal closed: no /quit
    assert alice.expect(b"\n") == b"* bob left\n"
    alice.send(b"/quit\n")
    assert alice.finish().endswith(b"* bye\n")


def test_nicknames_are_checked_and_unique(chat_server):
    server, _ = chat_server
    with connect(server) as first, connect(server) as second:
        assert join(first, "carol") == b"* welcome, carol; online: nobody else\n"
        assert join(second, "carol") == b"* carol is taken: send another\n"
        assert retry(second, "bad name!").startswith(b"* a nickname is 1-20 letters")
        assert retry(second, "dave") == b"* welcome, dave; online: carol\n"
    # Once both left, the names are free again.
    with connect(server) as again:
        assert read_line(again) == b"* hello: send your nickname\n"
        wait_for(lambda: retry(again, "carol").startswith(b"* welcome") or False)


def test_lines_arriving_one_byte_at_a_time_or_many_at_once(chat_server):
    server, _ = chat_server
    with connect(server) as speaker, connect(server) as listener:
        join(listener, "listener")
        assert read_line(speaker) == b"* hello: send your nickname\n"
        speaker.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for byte in b"speaker\nslowly\n":
            speaker.sendall(bytes([byte]))
        assert read_line(speaker).startswith(b"* welcome, speaker")
        assert read_line(listener) == b"* speaker joined\n"
        assert read_line(listener) == b"<speaker> slowly\n"
        speaker.sendall(b"".join(b"line %d\n" % n for n in range(10_000)))
        expected = b"".join(b"<speaker> line %d\n" % n for n in range(10_000))
        assert recv_exactly(listener, len(expected)) == expected


def test_an_oversized_line_closes_only_its_sender(chat_server):
    server, callback = chat_server
    with connect(server) as abuser, connect(server) as bystander:
        join(bystander, "bystander")
        join(abuser, "abuser")
        assert read_line(bystander) == b"* abuser joined\n"
        try:
            abuser.sendall(b"x" * 100_000)  # never a newline
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            assert recv_until_eof(abuser) == b""  # closed, once past Lines' max_length
        except ConnectionResetError:
            pass  # the kernel reset it: it had unread input when closed
        assert read_line(bystander) == b"* abuser left\n"
        bystander.sendall(b"/who\n")
        assert read_line(bystander) == b"* online: bystander\n"
    wait_for(lambda: len(callback.members()) == 0)


def test_a_member_who_stops_reading_is_disconnected_not_buffered(serve):
    server, callback = serve_chat(serve, high_water=64 * 1024)
    with connect(server) as stuck, connect(server) as talker:
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        join(stuck, "stuck")
        join(talker, "talker")
        line = b"y" * 4000 + b"\n"
        # Far more than the kernel's buffers and the high-water mark together.
        deadline = time.monotonic() + TIMEOUT
        while len(callback.members()) == 2 and time.monotonic() < deadline:
            talker.sendall(line * 64)
        assert len(callback.members()) == 1, "the stuck member was never disconnected"


def test_a_reset_mid_line_is_a_departure(chat_server):
    server, callback = chat_server
    with connect(server) as watcher:
        join(watcher, "watcher")
        quitter = connect(server)
        join(quitter, "quitter")
        assert read_line(watcher) == b"* quitter joined\n"
        quitter.sendall(b"half a li")
        reset(quitter)
        assert read_line(watcher) == b"* quitter left\n"


def test_stop_does_not_wait_for_idle_members(backend):
    app = chat.ChatServer()
    assert_stop_does_not_wait_for_idle_clients(
        app.on_line, backend, b"someone\n", lambda: len(app.server.connections()),
        started=lambda server: setattr(app, "server", server), **app.keywords())

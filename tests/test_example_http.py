"""examples/http: the HTTP/1.1 keep-alive responder, checked by wrk and curl and by
hostile clients, on every backend."""
import re
import socket
import subprocess

import pytest

from support import (TIMEOUT, connect, load_example, recv_exactly, recv_until_eof,
                     reset_mid_request, wait_for)

http = load_example("http")

HELLO = (b"HTTP/1.1 200 OK\r\nServer: simpletcp-example\r\nContent-Type: text/plain\r\n"
         b"Content-Length: 14\r\nConnection: keep-alive\r\n\r\nHello, world!\n")
GET = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"


@pytest.fixture
def responder(serve):
    """A responder, serving: (server, the HttpResponder)."""
    app = http.HttpResponder()
    return serve(app.on_request, **app.keywords()), app


def wait_until_forgotten(server):
    """Every connection, and with it what it left unparsed, is gone."""
    wait_for(lambda: server.connections() == [])


def test_wrk_keep_alive_load_gets_only_200s(responder, wrk):
    server, callback = responder
    run = subprocess.run([wrk, "-t", "1", "-c", "20", "-d", "1s",
                          f"http://127.0.0.1:{server.port}/"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "Non-2xx" not in run.stdout and "Socket errors" not in run.stdout, run.stdout
    completed = int(re.search(r"(\d+) requests in", run.stdout).group(1))
    assert completed > 0
    # wrk stops with requests in flight: the server answered at least what wrk counted.
    assert callback.answered >= completed


def test_wrk_pipelined_requests(responder, wrk, tmp_path):
    # wrk's Lua hook: each write holds 16 pipelined requests.
    script = tmp_path / "pipeline.lua"
    script.write_text('init = function(args)\n'
                      '  local r = {}\n'
                      '  for i = 1, 16 do r[i] = wrk.format(nil, "/") end\n'
                      '  req = table.concat(r)\n'
                      'end\n'
                      'request = function() return req end\n')
    server, _ = responder
    run = subprocess.run([wrk, "-t", "1", "-c", "10", "-d", "1s", "-s", str(script),
                          f"http://127.0.0.1:{server.port}/"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "Non-2xx" not in run.stdout and "Socket errors" not in run.stdout, run.stdout
    assert int(re.search(r"(\d+) requests in", run.stdout).group(1)) > 0


def test_curl_reuses_one_connection_and_honours_connection_close(responder, curl):
    server, _ = responder
    url = f"http://127.0.0.1:{server.port}/"
    reused = subprocess.run([curl, "-sS", "--http1.1", url, url, "-w", "[%{num_connects}]"],
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert reused.returncode == 0, reused.stderr
    assert reused.stdout == "Hello, world!\n[1]Hello, world!\n[0]"  # the second one reused
    closing = subprocess.run([curl, "-sS", "-i", "-H", "Connection: close", url],
                             capture_output=True, text=True, timeout=TIMEOUT)
    assert "Connection: close" in closing.stdout and closing.stdout.endswith("Hello, world!\n")
    missing = subprocess.run([curl, "-s", "-o", "/dev/null", "-w", "%{http_code}", url + "nope"],
                             capture_output=True, text=True, timeout=TIMEOUT)
    assert missing.stdout == "404"


def test_pipelined_requests_are_answered_in_order_in_one_write(responder):
    server, _ = responder
    with connect(server) as client:
        client.sendall(GET + b"HEAD / HTTP/1.1\r\n\r\n" + b"GET /x HTTP/1.1\r\n\r\n" + GET)
        head = HELLO[:-len(b"Hello, world!\n")]
        missing = http.response(b"404 Not Found", b"Not found\n", True)
        expected = HELLO + head + missing + HELLO
        assert recv_exactly(client, len(expected)) == expected


def test_connection_close_is_honoured_and_what_follows_is_not_answered(responder):
    server, _ = responder
    with connect(server) as client:
        client.sendall(GET + b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n" + GET)
        closing = HELLO.replace(b"keep-alive", b"close")
        assert recv_until_eof(client) == HELLO + closing


def test_http_1_0_closes_unless_kept_alive(responder):
    server, _ = responder
    with connect(server) as client:
        client.sendall(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\nGET / HTTP/1.0\r\n\r\n")
        assert recv_until_eof(client) == HELLO + HELLO.replace(b"keep-alive", b"close")


def test_a_body_is_skipped_and_the_next_request_answered(responder):
    server, _ = responder
    with connect(server) as client:
        client.sendall(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nGET /")
        not_allowed = http.response(b"405 Method Not Allowed", b"Method not allowed\n", True,
                                    extra=b"Allow: GET, HEAD\r\n")
        assert recv_exactly(client, len(not_allowed)) == not_allowed
        client.sendall(GET)
        assert recv_exactly(client, len(HELLO)) == HELLO


def test_a_request_one_byte_at_a_time(responder):
    server, _ = responder
    with connect(server) as client:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for byte in GET:
            client.sendall(bytes([byte]))
        assert recv_exactly(client, len(HELLO)) == HELLO


def test_ten_thousand_pipelined_requests_in_one_write(responder):
    server, callback = responder
    with connect(server) as client:
        client.sendall(GET * 10_000)
        assert recv_exactly(client, len(HELLO) * 10_000) == HELLO * 10_000
    assert callback.answered == 10_000


@pytest.mark.parametrize("abuse, status", [
    (b"garbage\r\n\r\n", b"400"),
    (b"ping\n", b"400"),  # a bad request line is answered before the head ends
    (b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", b"400"),
    (b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", b"400"),
    # two lengths: which one a proxy in front believed is unknown (request smuggling)
    (b"GET / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 0\r\n\r\nhello", b"400"),
    (b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", b"501"),
    (b"POST / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n", b"413"),
    (b"GET / HTTP/1.1\r\nX: " + b"x" * 20_000, b"431"),  # a head that never ends
], ids=["garbage", "request-line", "header", "length", "two-lengths", "chunked", "body-size",
        "head-size"])
def test_a_bad_request_is_answered_and_closed_and_others_go_on(responder, abuse, status):
    server, callback = responder
    with connect(server) as bystander, connect(server) as abuser:
        abuser.sendall(abuse)
        assert recv_until_eof(abuser).startswith(b"HTTP/1.1 " + status)
        bystander.sendall(GET)
        assert recv_exactly(bystander, len(HELLO)) == HELLO
    wait_until_forgotten(server)


def test_a_client_reset_mid_request_leaves_nothing_behind(responder):
    server, callback = responder
    reset_mid_request(server, b"GET / HTTP/1.1\r\nHost: x\r\n")
    with connect(server) as client:
        client.sendall(GET)
        assert recv_exactly(client, len(HELLO)) == HELLO
    wait_until_forgotten(server)

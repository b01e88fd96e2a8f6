"""examples/kvstore: the Redis-compatible store, checked by real Redis clients
(redis-benchmark, redis-cli, redis-py) and by hostile ones, on every backend."""
import socket
import subprocess
import time

import pytest

from support import (TIMEOUT, assert_stop_does_not_wait_for_idle_clients, connect,
                     load_example, recv_exactly, recv_until_eof, reset_mid_request,
                     wait_for)

kvstore = load_example("kvstore")


@pytest.fixture
def store(serve):
    """A fresh store, serving: (server, the KeyValueServer)."""
    app = kvstore.KeyValueServer()
    return serve(app.on_request, **app.keywords()), app


def benchmark(redis_benchmark, port, *args):
    """redis-benchmark's report (CSV); fails on any error it printed."""
    run = subprocess.run([redis_benchmark, "-h", "127.0.0.1", "-p", str(port), "--csv", *args],
                         capture_output=True, text=True, timeout=120)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert "error" not in output.lower() and "warning" not in output.lower(), output
    return {line.split(",")[0].strip('"'): line for line in run.stdout.splitlines()[1:]}


@pytest.mark.parametrize("pipeline", ["1", "16"])
def test_redis_benchmark_default_commands_run_without_an_error(store, redis_benchmark, redis_py,
                                                                pipeline):
    server, _ = store
    rows = benchmark(redis_benchmark, server.port, "-t", "ping,set,get,incr", "-n", "2000",
                     "-c", "10", "-P", pipeline)
    assert set(rows) == {"PING_INLINE", "PING_MBULK", "SET", "GET", "INCR"}
    # Without -r every INCR hits one key: each was executed once. With -P 16 each of the
    # 10 clients may send one pipeline beyond -n.
    client = redis_py.Redis(port=server.port, protocol=2, socket_timeout=TIMEOUT)
    incremented = int(client.get("counter:__rand_int__"))
    assert incremented == 2000 if pipeline == "1" else 2000 <= incremented < 2000 + 10 * 16
    assert client.get("key:__rand_int__") == b"VXK"
    client.close()


def test_redis_py_commands_pipelines_and_transactions(store, redis_py):
    server, _ = store
    client = redis_py.Redis(port=server.port, protocol=2, socket_timeout=TIMEOUT)
    assert client.ping() is True
    assert client.echo(b"\r\n*3\r\n") == b"\r\n*3\r\n"  # RESP inside a value is data
    assert client.set("name", "value") is True
    assert client.get("name") == b"value"
    assert client.set("name", "other", nx=True) is None
    assert client.set("missing", "x", xx=True) is None
    assert client.incr("hits") == 1 and client.incr("hits") == 2 and client.decr("hits") == 1
    assert client.exists("name", "hits", "nothing") == 2
    assert client.delete("name", "nothing") == 1 and client.get("name") is None
    assert client.set("word", "abc")
    with pytest.raises(redis_py.ResponseError, match="not an integer"):
        client.incr("word")
    big = bytes(range(256)) * 2048  # 512 KiB, under the request limit
    assert client.set("big", big) and client.get("big") == big
    with client.pipeline(transaction=False) as pipe:
        for number in range(100):
            pipe.set(f"k{number}", number).get(f"k{number}")
        results = pipe.execute()
    assert results == [item for n in range(100) for item in (True, str(n).encode())]
    with client.pipeline() as transaction:  # MULTI ... EXEC
        transaction.incr("t").incr("t").get("t")
        assert transaction.execute() == [1, 2, b"2"]
    with pytest.raises(redis_py.ResponseError, match="unknown command 'NOSUCH'"):
        client.execute_command("NOSUCH", "x")
    assert client.ping()  # the connection survived the error
    client.close()


def test_redis_py_resp3_handshake_is_refused_with_the_way_out(store, redis_py):
    server, _ = store
    with pytest.raises(redis_py.ResponseError, match="protocol=2"):
        redis_py.Redis(port=server.port, protocol=3, socket_timeout=TIMEOUT).ping()


def test_redis_cli_commands(store, redis_cli):
    server, _ = store

    def cli(*words):
        return subprocess.run([redis_cli, "-p", str(server.port), *words], capture_output=True,
                              text=True, timeout=TIMEOUT).stdout.strip()

    assert cli("set", "greeting", "hello") == "OK"
    assert cli("get", "greeting") == "hello"
    assert cli("incr", "visits") == "1"
    assert cli("frobnicate").startswith("ERR unknown command 'frobnicate'")


# ----------------------------------------------------------------------------- hostile clients

def test_a_request_one_byte_at_a_time(store):
    server, _ = store
    with connect(server) as client:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for byte in b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nv\r\nxy\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n":
            client.sendall(bytes([byte]))
        assert recv_exactly(client, 16) == b"+OK\r\n$5\r\nv\r\nxy\r\n"


def test_a_request_of_many_small_arguments_sent_in_pieces_is_parsed_a_few_times(serve):
    """A request of thousands of one-byte arguments, sent in a hundred small pieces:
    the store parses it again only once enough has arrived for it to be whole, a
    handful of times, not once per piece (the cost of which grew with the square of
    the request's size: one 1 MB request sent so held the server for minutes)."""
    sizes = []

    class CountingFramer(kvstore.RespFramer):
        def frame(self, data, start):
            sizes.append(len(data) - start)
            return super().frame(data, start)

    app = kvstore.KeyValueServer()
    server = serve(app.on_request, **dict(app.keywords(), framing=CountingFramer()))
    request = b"*2001\r\n$3\r\nDEL\r\n" + b"$1\r\nx\r\n" * 2000
    with connect(server) as client:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for start in range(0, len(request), 140):
            client.sendall(request[start:start + 140])
            time.sleep(0.001)  # most pieces are read apart (the assertion holds either way)
        assert recv_exactly(client, 4) == b":0\r\n"
    assert len(sizes) <= 10, sizes


def test_ten_thousand_pipelined_commands_in_one_write(store):
    server, _ = store
    with connect(server) as client:
        client.sendall(b"*2\r\n$4\r\nINCR\r\n$1\r\nn\r\n" * 10_000 + b"PING\r\n")
        replies = recv_exactly(client, sum(len(b":%d\r\n" % n) for n in range(1, 10_001)) + 7)
    assert replies == b"".join(b":%d\r\n" % n for n in range(1, 10_001)) + b"+PONG\r\n"


@pytest.mark.parametrize("abuse", [
    b"*1\r\n$2000000\r\n",                       # a bulk larger than any request
    # two bulks, each allowed, whose sum is over the limit
    b"*3\r\n$3\r\nSET\r\n$600000\r\n" + b"k" * 600_000 + b"\r\n$600000\r\n" + b"v" * 600_000,
    b"x" * (200 * 1024),                         # an inline line that never ends
    b"*abc\r\n",                                 # a malformed header
    b"*1000000\r\n",                             # more arguments than a request can hold
    b"*1\r\n:5\r\n",                             # not a bulk string
    b"*1\r\n$3\r\nPINGX\r\n",                    # bulk not followed by CRLF
], ids=["bulk-length", "request-size", "inline-line", "header", "argument-count",
        "not-bulk", "crlf"])
def test_an_abusive_request_is_answered_and_closed_and_others_go_on(store, abuse):
    server, callback = store
    with connect(server) as bystander, connect(server) as abuser:
        bystander.sendall(b"SET before 1\r\n")
        assert recv_exactly(bystander, 5) == b"+OK\r\n"
        try:
            abuser.sendall(abuse)
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed before it finished sending
        try:
            reply = recv_until_eof(abuser)
        except ConnectionResetError:
            reply = b"-ERR Protocol error"  # the kernel reset it: it had unread input
        assert reply.startswith(b"-ERR Protocol error"), reply[:200]
        bystander.sendall(b"GET before\r\n")
        assert recv_exactly(bystander, 7) == b"$1\r\n1\r\n"
    # Nothing of the abuser is kept: its connection (and its state) is gone.
    wait_for(lambda: server.connections() == [])


def test_a_client_reset_mid_request_leaves_nothing_behind(store):
    server, callback = store
    reset_mid_request(server, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$100\r\nhalf")
    with connect(server) as client:
        client.sendall(b"EXISTS k\r\n")
        assert recv_exactly(client, 4) == b":0\r\n"
    wait_for(lambda: server.connections() == [])


def test_quit_answers_then_closes(store):
    server, _ = store
    with connect(server) as client:
        client.sendall(b"PING\r\nQUIT\r\nPING\r\n")
        assert recv_until_eof(client) == b"+PONG\r\n+OK\r\n"


def test_stop_does_not_wait_for_idle_clients(backend):
    app = kvstore.KeyValueServer()
    server = []
    assert_stop_does_not_wait_for_idle_clients(
        app.on_request, backend, b"*2\r\n$3\r\nGET\r\n$1\r\nk", lambda: len(server[0].connections()),
        started=server.append, **app.keywords())

"""SNI: a server context whose sni_callback picks a certificate by the name the client
asks for (ssl_object.context = another context). Each client gets the certificate of
its name, queue.tls.server_hostname says which name that was, and an sni_callback that
refuses a name (an alert) or fails (an exception) closes only that connection."""
import logging
import ssl
import subprocess
import sys

import pytest

from support import connect, connect_tls, echo, recv_exactly, wait_for


OTHER_NAME = "other.example"


@pytest.fixture(scope="session")
def other_certificate(tls_ca):
    """A second certificate, for OTHER_NAME only: a client that asks for OTHER_NAME and
    verifies the host name accepts only this one."""
    return tls_ca.issue_cert(OTHER_NAME)


class PickByName:
    """An sni_callback: OTHER_NAME gets the other context's certificate, "refused.example"
    an alert (or an exception, with raises=True); anything else the default one."""

    def __init__(self, other_context, raises=False):
        self.other_context = other_context
        self.raises = raises
        self.names = []

    def __call__(self, ssl_object, server_name, context):
        self.names.append(server_name)
        if server_name == OTHER_NAME:
            ssl_object.context = self.other_context
        elif server_name == "refused.example":
            if self.raises:
                raise LookupError(f"no certificate for {server_name}")
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        return None


@pytest.fixture
def sni_server_context(server_context, other_certificate):
    other_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    other_certificate.configure_cert(other_context)
    server_context.sni_callback = PickByName(other_context)
    return server_context


def say_server_hostname(queue, data):
    """Replies with the name the client asked for, as queue.tls has it, and a newline;
    then closes (s_client ends at the close)."""
    queue.put(f"{queue.tls.server_hostname}\n".encode())
    queue.shutdown()


def test_each_name_gets_its_certificate_and_queue_tls_says_which(
        serve, sni_server_context, client_context):
    server = serve(say_server_hostname, ssl=sni_server_context)
    for name in ["localhost", OTHER_NAME, "localhost"]:
        # The client checks the certificate against the name it asked for.
        with connect_tls(server, client_context, server_hostname=name) as client:
            assert ("DNS", name) in client.getpeercert()["subjectAltName"]
            client.sendall(b"?")
            assert recv_exactly(client, len(name) + 1) == f"{name}\n".encode()
    assert sni_server_context.sni_callback.names == ["localhost", OTHER_NAME, "localhost"]


def test_a_client_that_asks_for_no_name_gets_the_default_certificate(
        serve, sni_server_context, client_context):
    server = serve(say_server_hostname, ssl=sni_server_context)
    # By IP address: Python's client sends no SNI then (RFC 6066 allows only names).
    with connect_tls(server, client_context, server_hostname="127.0.0.1") as client:
        assert ("IP Address", "127.0.0.1") in client.getpeercert()["subjectAltName"]
        client.sendall(b"?")
        assert recv_exactly(client, 5) == b"None\n"
    assert sni_server_context.sni_callback.names == [None]


# An exception in an sni_callback is Python's to report (sys.unraisablehook, which
# pytest turns into this warning); the handshake fails with an alert as for a refusal.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("refusal", ["alert", "exception"])
def test_an_sni_callback_that_refuses_a_name_closes_only_that_connection(
        serve, sni_server_context, client_context, caplog, refusal):
    sni_server_context.sni_callback.raises = refusal == "exception"
    disconnected = []
    server = serve(echo, ssl=sni_server_context,
                   on_disconnect=lambda queue: disconnected.append(queue.close_reason))
    with caplog.at_level(logging.DEBUG, logger="simpletcp"):
        with connect_tls(server, client_context, server_hostname=OTHER_NAME) as kept:
            for _ in range(5):
                with pytest.raises(ssl.SSLError) as refused:
                    connect_tls(server, client_context, server_hostname="refused.example")
                if refusal == "alert":
                    assert "UNRECOGNIZED_NAME" in str(refused.value)
            wait_for(lambda: server.connection_count == 1)
            # The connection open before is served on, and new ones are served.
            kept.sendall(b"still here")
            assert recv_exactly(kept, 10) == b"still here"
            with connect_tls(server, client_context) as fresh:
                fresh.sendall(b"fresh")
                assert recv_exactly(fresh, 5) == b"fresh"
    failed = [r for r in caplog.records if r.name == "simpletcp"
              and "TLS handshake failed" in r.getMessage()]
    # Five refused handshakes, one WARNING: the rest are counted for the next report.
    assert len(failed) == 1 and failed[0].levelno == logging.WARNING
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    # The refused connections never opened (no on_disconnect); the two served ones did.
    wait_for(lambda: len(disconnected) == 2)
    assert all(reason is not None for reason in disconnected)


def test_openssl_s_client_gets_the_certificate_of_the_name_it_asks_for(
        serve, sni_server_context, tls_files, openssl):
    server = serve(say_server_hostname, ssl=sni_server_context)
    for name in ["localhost", OTHER_NAME]:
        # -verify_hostname with -verify_return_error: s_client fails on another name's
        # certificate.
        result = subprocess.run(
            [openssl, "s_client", "-connect", f"127.0.0.1:{server.port}", "-servername",
             name, "-verify_hostname", name, "-CAfile", str(tls_files["ca"]),
             "-verify_return_error", "-quiet"],
            input=b"?\n", capture_output=True, timeout=30)
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"{name}\n".encode()
    assert sni_server_context.sni_callback.names == ["localhost", OTHER_NAME]


def handshake_with_hello_in_records(sock, client_context, name, records):
    """A TLS client over ``sock`` whose ClientHello is cut into ``records`` handshake
    records (as TLS allows), then the rest of the handshake: its SSLObject."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    session = client_context.wrap_bio(incoming, outgoing, server_hostname=name)
    with pytest.raises(ssl.SSLWantReadError):
        session.do_handshake()
    hello = outgoing.read()
    assert hello[0] == 22 and len(hello) == 5 + int.from_bytes(hello[3:5], "big")
    message, step = hello[5:], -(-(len(hello) - 5) // records)
    for start in range(0, len(message), step):
        fragment = message[start:start + step]
        sock.sendall(hello[:3] + len(fragment).to_bytes(2, "big") + fragment)
    while True:
        try:
            session.do_handshake()
            break
        except ssl.SSLWantReadError:
            sock.sendall(outgoing.read())
            received = sock.recv(65536)
            assert received, "closed during the handshake"
            incoming.write(received)
    sock.sendall(outgoing.read())
    return session, incoming, outgoing


@pytest.mark.parametrize("records, seen", [(3, OTHER_NAME), (40, None)])
def test_a_client_hello_in_several_records_is_read_for_its_name(
        serve, sni_server_context, client_context, records, seen):
    # A few records: the name is read across them. Past 16 records the name is not
    # looked for (None: a bounded cost for a client trickling tiny records), and the
    # connection is served all the same (OpenSSL, and the sni_callback, still see it).
    server = serve(say_server_hostname, ssl=sni_server_context)
    with connect(server) as sock:
        session, incoming, outgoing = handshake_with_hello_in_records(
            sock, client_context, OTHER_NAME, records)
        session.write(b"?")
        sock.sendall(outgoing.read())
        reply = b""
        while not reply.endswith(b"\n"):
            incoming.write(sock.recv(65536))
            try:
                reply += session.read(100)
            except ssl.SSLWantReadError:
                pass
    assert reply == f"{seen}\n".encode()
    assert sni_server_context.sni_callback.names == [OTHER_NAME]


# A child process serving TLS with callbacks that may crash the interpreter (a crash
# would take pytest with it): argv is the test CA's, the server's certificate and key
# files, the backend, then the test's own; `server_context()` loads the certificate,
# `echo_over_tls(port, data, ca)` is one client's round trip.
TLS_CHILD = r'''
import socket, ssl, sys
from simpletcp.tcpserver import TCPServer

ca, certfile, keyfile, backend, *extra = sys.argv[1:]

def server_context():
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile, keyfile)
    return context

def serve(context):
    return TCPServer("localhost", 0, lambda queue, data: data, ssl=context,
                     backend=backend).start()

def echo_over_tls(port, data):
    client_context = ssl.create_default_context(cafile=ca)
    with client_context.wrap_socket(socket.create_connection(("127.0.0.1", port),
                                    timeout=10), server_hostname="localhost") as c:
        c.sendall(data)
        return c.recv(len(data))
'''


def run_tls_child(program, tls_files, backend, *extra):
    """Run TLS_CHILD + `program`: it must exit 0; its stdout."""
    result = subprocess.run(
        [sys.executable, "-c", TLS_CHILD + program, str(tls_files["ca"]),
         str(tls_files["certfile"]), str(tls_files["keyfile"]), backend, *extra],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


# OpenSSL calls the context's sni_callback and _msg_callback from inside the loop's own
# call into the session; one that drove the session from there re-entered OpenSSL
# mid-call, and CPython's ssl module freed memory twice: the interpreter crashed (it
# does under asyncio too). They are given a TLSSessionView, which refuses.
DRIVING_CALLBACK = r'''
hook, method = extra
context = server_context()
refusals = []

def drive(view):
    try:
        getattr(view, method)(*([b"x"] if method == "write" else []))
    except RuntimeError as refusal:
        refusals.append(refusal)
        raise

if hook == "sni_callback":
    context.sni_callback = lambda view, name, ctx: drive(view)
else:
    context._msg_callback = lambda view, *args: drive(view)
server = serve(context)
for attempt in range(3):
    try:
        echo_over_tls(server.port, b"hello")
    except (ssl.SSLError, OSError):
        pass
context.sni_callback = context._msg_callback = None
assert echo_over_tls(server.port, b"still serving") == b"still serving"
assert server.stop(timeout=10)
assert refusals and all("the loop drives this TLS session" in str(r) for r in refusals)
print("survived", len(refusals))
'''


@pytest.mark.parametrize("hook", ["sni_callback", "_msg_callback"])
@pytest.mark.parametrize("method", ["do_handshake", "read", "write", "unwrap", "pending"])
def test_a_context_callback_that_drives_the_session_is_refused_not_a_crash(
        tls_files, backend, hook, method):
    assert "survived" in run_tls_child(DRIVING_CALLBACK, tls_files, backend, hook, method)


def test_a_context_callback_sees_the_session_it_may_switch_and_read(
        serve, sni_server_context, client_context):
    seen = []
    other_context = sni_server_context.sni_callback.other_context

    def look(view, server_name, context):
        seen.append((type(view).__name__, view.server_side, view.server_hostname,
                     view.context is context))
        with pytest.raises(TypeError):
            view.context = "not a context"
        if server_name == OTHER_NAME:
            view.context = other_context

    sni_server_context.sni_callback = look
    server = serve(say_server_hostname, ssl=sni_server_context)
    with connect_tls(server, client_context, server_hostname=OTHER_NAME) as client:
        assert ("DNS", OTHER_NAME) in client.getpeercert()["subjectAltName"]
        client.sendall(b"?")
        assert recv_exactly(client, len(OTHER_NAME) + 1) == f"{OTHER_NAME}\n".encode()
    assert seen == [("TLSSessionView", True, None, True)]


def test_a_view_kept_past_its_callback_is_refused_in_another_thread(
        serve, sni_server_context, client_context):
    # The loop's calls into the session release the GIL: another thread that switched
    # a kept view's context meanwhile corrupted OpenSSL's memory (handshakes failed with
    # internal errors, then the interpreter aborted). Only the loop's thread may use it.
    kept = []
    other_context = sni_server_context.sni_callback.other_context

    def keep(view, server_name, context):
        kept.append(view)
        assert view.version() is None  # the loop's thread, mid-handshake: allowed

    sni_server_context.sni_callback = keep
    server = serve(echo, ssl=sni_server_context)
    with connect_tls(server, client_context) as client:
        client.sendall(b"hello")
        assert recv_exactly(client, 5) == b"hello"
        view, = kept
        for use in [lambda: setattr(view, "context", other_context),
                    lambda: view.context, view.version, view.cipher, view.getpeercert,
                    view.compression, view.selected_alpn_protocol,
                    lambda: view.session_reused]:
            with pytest.raises(RuntimeError, match="only in the loop's thread"):
                use()
        client.sendall(b"still served")
        assert recv_exactly(client, 12) == b"still served"


# A context switched from a _msg_callback after the ClientHello freed the certificate
# OpenSSL was using (valgrind: an invalid read in SSL_do_handshake; handshakes failed
# with LENGTH_MISMATCH). The view refuses any switch while the context has one.
SWITCH_FROM_MSG_CALLBACK = r'''
context, other = server_context(), server_context()
refusals = []

def switch(view, *args):
    try:
        view.context = other
    except RuntimeError as refusal:
        refusals.append(refusal)

context._msg_callback = switch
context.sni_callback = lambda view, name, ctx: switch(view)
server = serve(context)
for attempt in range(10):
    assert echo_over_tls(server.port, b"hello") == b"hello"
assert server.stop(timeout=10)
assert refusals and all("_msg_callback" in str(r) for r in refusals)
print("served", len(refusals))
'''


def test_with_a_msg_callback_the_view_refuses_to_switch_the_context(tls_files, backend):
    assert "served" in run_tls_child(SWITCH_FROM_MSG_CALLBACK, tls_files, backend)

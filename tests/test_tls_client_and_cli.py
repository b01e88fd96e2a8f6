"""TLS for the client and the command line: ClientSocket(ssl=..., server_hostname=...)
against a TLS server, and python -m simpletcp --certfile/--keyfile/--ca-certs/
--require-client-cert (gunicorn's names; uvicorn's --ssl-* spellings are aliases)."""
import os
import signal
import ssl
import subprocess
import sys

import pytest

from simpletcp.clientsocket import ClientSocket
from support import ServingCLI, connect_tls, echo, recv_exactly


# ---- ClientSocket ------------------------------------------------------------------------

def test_clientsocket_speaks_tls_and_checks_the_certificate(serve, server_context,
                                                           client_context):
    server = serve(echo, ssl=server_context)
    client = ClientSocket("localhost", server.port, ssl=client_context)
    assert client.send("hello over TLS") == b"hello over TLS"
    assert client.server_hostname == "localhost"
    with ClientSocket("localhost", server.port, single_use=False,
                      ssl=client_context) as kept:
        assert kept.send(b"one") == b"one"
        assert kept.send(b"two") == b"two"
        assert kept.connected


def test_clientsocket_refuses_a_certificate_it_cannot_verify(serve, server_context,
                                                            client_context):
    server = serve(echo, ssl=server_context)
    untrusting = ssl.create_default_context()  # the system's CAs, not the test CA
    with pytest.raises(ssl.SSLCertVerificationError):
        ClientSocket("localhost", server.port, ssl=untrusting).send(b"x")
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch|match"):
        ClientSocket("localhost", server.port, ssl=client_context,
                     server_hostname="elsewhere.example").send(b"x")


def test_clientsocket_tls_arguments_are_checked(server_context, client_context):
    with pytest.raises(TypeError, match="ssl must be an ssl.SSLContext"):
        ClientSocket("localhost", 5000, ssl="ca.pem")
    with pytest.raises(ValueError, match="ssl must be a client-side context"):
        ClientSocket("localhost", 5000, ssl=ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    with pytest.raises(ValueError, match="server_hostname applies to TLS"):
        ClientSocket("localhost", 5000, server_hostname="localhost")
    with pytest.raises(TypeError, match="server_hostname must be a str"):
        ClientSocket("localhost", 5000, ssl=client_context, server_hostname=b"localhost")
    with pytest.raises(ValueError, match="server_hostname is required"):
        ClientSocket("unix:/tmp/nothing.sock", 0, ssl=client_context)


@pytest.mark.parametrize("name", ["", ".example.com", "a..b", "x" * 64 + ".example.com",
                                  "local\0host", "\ud800"])
def test_clientsocket_a_server_hostname_tls_cannot_send_is_refused_at_once(client_context,
                                                                          name):
    # Python's ssl module would refuse it only at the handshake, in send().
    with pytest.raises(ValueError, match="server_hostname"):
        ClientSocket("localhost", 5000, ssl=client_context, server_hostname=name)


# ---- the command line -----------------------------------------------------------------------

def cli(*args):
    return subprocess.run([sys.executable, "-m", "simpletcp", *args], capture_output=True,
                          text=True, timeout=30)


@pytest.mark.parametrize("certfile, keyfile", [("--certfile", "--keyfile"),
                                               ("--ssl-certfile", "--ssl-keyfile")])
def test_cli_serves_tls_with_certfile_and_keyfile(tls_files, client_context, certfile,
                                                  keyfile):
    # gunicorn's flags, and uvicorn's spellings of them.
    with ServingCLI("--port", "0", certfile, str(tls_files["certfile"]),
                    keyfile, str(tls_files["keyfile"])) as server:
        with connect_tls(server_at("127.0.0.1", server.port), client_context) as client:
            client.sendall(b"over the CLI")
            assert recv_exactly(client, 12) == b"over the CLI"
        assert server.stop(signal.SIGTERM) == 0


def test_cli_require_client_cert(tls_files, tls_ca, client_context):
    with ServingCLI("--port", "0", "--certfile", str(tls_files["certfile"]),
                    "--keyfile", str(tls_files["keyfile"]), "--ca-certs",
                    str(tls_files["ca"]), "--require-client-cert") as server:
        where = server_at("127.0.0.1", server.port)
        with pytest.raises((ssl.SSLError, ConnectionResetError, EOFError)):
            with connect_tls(where, client_context) as client:
                client.sendall(b"no certificate")
                if not client.recv(100):
                    raise EOFError
        tls_ca.issue_cert("client@example.test").configure_cert(client_context)
        with connect_tls(where, client_context) as client:
            client.sendall(b"with one")
            assert recv_exactly(client, 8) == b"with one"
        server.wait_for_log("TLS handshake failed")


@pytest.fixture
def encrypted_keyfile(tls_files, tmp_path):
    """The server's private key encrypted with the password "open sesame"."""
    from cryptography.hazmat.primitives import serialization
    key = serialization.load_pem_private_key(tls_files["keyfile"].read_bytes(), None)
    path = tmp_path / "encrypted.key"
    path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"open sesame")))
    return path


@pytest.mark.parametrize("flag", ["--keyfile-password", "--ssl-keyfile-password"])
def test_cli_an_encrypted_key_is_opened_with_its_password(tls_files, encrypted_keyfile,
                                                          client_context, flag):
    with ServingCLI("--port", "0", "--certfile", str(tls_files["certfile"]),
                    "--keyfile", str(encrypted_keyfile), flag, "open sesame") as server:
        with connect_tls(server_at("127.0.0.1", server.port), client_context) as client:
            client.sendall(b"unlocked")
            assert recv_exactly(client, 8) == b"unlocked"
        assert server.stop(signal.SIGTERM) == 0


@pytest.mark.parametrize("password", [["--keyfile-password", "wrong"], []])
def test_cli_an_encrypted_key_without_its_password_is_an_error_naming_it(
        tls_files, encrypted_keyfile, password):
    # In a session of its own: no terminal for OpenSSL to ask the password on (it would
    # wait there for one), as under systemd or in a container.
    result = subprocess.run(
        [sys.executable, "-m", "simpletcp", "--port", "0", "--certfile",
         str(tls_files["certfile"]), "--keyfile", str(encrypted_keyfile), *password],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
        start_new_session=True)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("simpletcp: ") and "Traceback" not in result.stderr
    assert f"the private key in {encrypted_keyfile}" in result.stderr
    if not password:
        assert "the private key is encrypted: give its password (--keyfile-password)" in \
            result.stderr and "Enter PEM pass phrase" not in result.stderr
        assert "('the private key" not in result.stderr  # the message, not a tuple


def test_cli_a_password_that_is_no_utf_8_opens_the_key_it_encrypted(tls_files, tmp_path,
                                                                    client_context):
    # Typed in a Latin-1 terminal: its bytes reach argv as they are, and are the key's
    # password as they are.
    from cryptography.hazmat.primitives import serialization
    password = "\N{LATIN SMALL LETTER E WITH ACUTE}t\N{LATIN SMALL LETTER E WITH ACUTE}" \
        .encode("latin-1")
    key = serialization.load_pem_private_key(tls_files["keyfile"].read_bytes(), None)
    keyfile = tmp_path / "latin-1.key"
    keyfile.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password)))
    with ServingCLI("--port", "0", "--certfile", str(tls_files["certfile"]),
                    "--keyfile", str(keyfile), "--keyfile-password",
                    os.fsdecode(password)) as server:
        with connect_tls(server_at("127.0.0.1", server.port), client_context) as client:
            client.sendall(b"unlocked")
            assert recv_exactly(client, 8) == b"unlocked"
        assert server.stop(signal.SIGTERM) == 0


@pytest.mark.parametrize("args, words", [
    (["--keyfile-password", "pw"], "argument --keyfile-password: needs --certfile"),
    (["--ssl-shutdown-timeout", "-1"],
     "argument --ssl-shutdown-timeout: ssl_shutdown_timeout must be"),
    (["--keyfile", "k.pem"], "argument --keyfile: needs --certfile"),
    (["--ca-certs", "ca.pem"], "argument --ca-certs: needs --certfile"),
    (["--certfile", "c.pem", "--require-client-cert"],
     "argument --require-client-cert: needs --ca-certs"),
    (["--ssl-handshake-timeout", "0"], "argument --ssl-handshake-timeout"),
])
def test_cli_tls_flag_mistakes_are_usage_errors(args, words):
    result = cli("--port", "0", *args)
    assert result.returncode == 2
    assert words in result.stderr


def test_cli_an_unreadable_certificate_is_an_error_not_a_traceback(tmp_path):
    result = cli("--port", "0", "--certfile", str(tmp_path / "missing.pem"))
    assert result.returncode == 1
    assert result.stderr.startswith("simpletcp: ") and "Traceback" not in result.stderr
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    result = cli("--port", "0", "--certfile", str(tmp_path / "junk.pem"))
    assert result.returncode == 1 and "Traceback" not in result.stderr


def test_cli_a_certificate_file_problem_names_the_file(tls_files, tls_ca, tmp_path):
    # OpenSSL's own errors name no file ("[Errno 2] No such file or directory",
    # "[SSL] PEM lib"): with three files given, the user must be told which one.
    certfile, keyfile, ca = (str(tls_files[name]) for name in ("certfile", "keyfile", "ca"))
    other_key = tmp_path / "other-key.pem"
    tls_ca.issue_cert("other.example").private_key_pem.write_to_path(str(other_key))
    missing = str(tmp_path / "missing.pem")
    for args, words in [
            (["--certfile", certfile, "--keyfile", missing], missing),
            (["--certfile", certfile, "--keyfile", keyfile, "--ca-certs", missing], missing),
            (["--certfile", certfile, "--keyfile", str(other_key)],
             f"the private key in {other_key}: [X509: KEY_VALUES_MISMATCH]"),
            (["--certfile", certfile], f"the certificate chain in {certfile} and its "
                                       "private key"),
            (["--certfile", certfile, "--keyfile", keyfile, "--ca-certs", keyfile],
             f"the CA certificates in {keyfile}")]:
        result = cli("--port", "0", *args)
        assert result.returncode == 1, result.stderr
        assert result.stderr.startswith("simpletcp: ") and words in result.stderr, args


class server_at:
    """What connect_tls needs of a server: ip and port."""

    def __init__(self, ip, port):
        self.ip, self.port = ip, port


def test_cli_workers_each_serve_tls(tls_files, client_context, tmp_path):
    # The context is made before the fork; each worker wraps its own connections.
    (tmp_path / "pid_app.py").write_text(
        "import os\n\ndef reply(queue, data):\n    queue.put(str(os.getpid()).encode())\n")
    with ServingCLI("pid_app:reply", "--port", "0", "--workers", "2",
                    "--certfile", str(tls_files["certfile"]),
                    "--keyfile", str(tls_files["keyfile"]), cwd=tmp_path) as server:
        lines = server.wait_for_log("started (pid", 2)
        pids = {line.rsplit("(pid ", 1)[1].split(")")[0] for line in lines}
        for _ in range(4):
            with connect_tls(server_at("127.0.0.1", server.port), client_context) as client:
                client.sendall(b"pid?")
                assert client.recv(100).decode() in pids
        assert server.stop(signal.SIGTERM) == 0

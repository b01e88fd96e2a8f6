"""Shared test configuration and fixtures: ``backend`` and ``serve`` (every test that takes
one runs once on each poller backend), the benchmark suite's C programs."""
import pathlib
import shutil
import ssl
import subprocess

import pytest

from simpletcp.tcpserver import BACKENDS, DEFAULT_GRACE_PERIOD
from support import BENCH

ROOT = BENCH.parent


@pytest.fixture(autouse=True)
def _run_in_a_scratch_directory(tmp_path, monkeypatch):
    # Subprocesses (python -m simpletcp, python -c ...) put their working directory on
    # sys.path. From the repository root that would import the source tree (with the
    # loop pip left there, or none) instead of the installed package the tests check.
    monkeypatch.chdir(tmp_path)


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Each poller backend the compiled loop has (epoll, poll), in turn."""
    return request.param


@pytest.fixture
def serve(tcp_server_factory, backend):
    """serve(callback, mode="localhost", **keywords) -> a started TCPServer on a free port,
    on ``backend``, stopped after the test: simpletcp.testing's ``tcp_server_factory``,
    with TCPServer's own grace period (the tests of stop() measure against it)."""
    def start(callback, mode="localhost", **keywords):
        keywords.setdefault("backend", backend)
        keywords.setdefault("grace_period", DEFAULT_GRACE_PERIOD)
        return tcp_server_factory(callback, mode, **keywords)

    return start


def compile_c(tmp_path_factory, source: pathlib.Path, *flags: str) -> pathlib.Path:
    """``source`` compiled with gcc (skips the test if there is no compiler)."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        pytest.skip("needs a C compiler (gcc)")
    if not source.exists():
        pytest.skip(f"needs the source tree's {source.relative_to(ROOT)}")
    output = tmp_path_factory.mktemp(source.stem) / source.stem
    subprocess.run([compiler, "-O2", "-o", str(output), str(source), *flags], check=True)
    return output


@pytest.fixture(scope="session")
def bench_programs(tmp_path_factory):
    """The benchmark suite's C programs (bench/), compiled once: name -> path. c_uring_echo
    is None where it does not compile (headers older than Linux 6.1)."""
    programs = {
        "loadgen": compile_c(tmp_path_factory, BENCH / "loadgen.c"),
        "c_epoll_echo": compile_c(tmp_path_factory, BENCH / "servers" / "c_epoll_echo.c"),
    }
    try:
        programs["c_uring_echo"] = compile_c(tmp_path_factory, BENCH / "servers" / "c_uring_echo.c")
    except subprocess.CalledProcessError:
        programs["c_uring_echo"] = None
    return programs


@pytest.fixture(scope="session")
def tls_loadgen(tmp_path_factory):
    """bench/tls_loadgen.c built with OpenSSL's libssl; skips where its headers are missing."""
    try:
        return compile_c(tmp_path_factory, BENCH / "tls_loadgen.c", "-lssl", "-lcrypto")
    except subprocess.CalledProcessError:
        pytest.skip("bench/tls_loadgen.c does not compile here: it needs OpenSSL's headers "
                    "(apt-get install libssl-dev; .ci/run installs it)")


@pytest.fixture(scope="session")
def loadgen(bench_programs):
    """bench/loadgen.c, built: the closed-loop load generator that checks every echoed byte."""
    return bench_programs["loadgen"]


# ----------------------------------------------------------------------------- real clients
# Third-party programs the protocol examples are checked with. `.ci/run` installs them
# (as root); elsewhere the tests that need one skip, naming it and how to install it.

def installed_program(program: str, package: str) -> str:
    path = shutil.which(program)
    if path is None:
        pytest.skip(f"needs {program}: apt-get install {package} (.ci/run installs it)")
    return path


@pytest.fixture(scope="session")
def redis_benchmark():
    return installed_program("redis-benchmark", "redis-tools")


@pytest.fixture(scope="session")
def redis_cli():
    return installed_program("redis-cli", "redis-tools")


@pytest.fixture(scope="session")
def wrk():
    return installed_program("wrk", "wrk")


@pytest.fixture(scope="session")
def curl():
    return installed_program("curl", "curl")


@pytest.fixture(scope="session")
def socat():
    return installed_program("socat", "socat")


@pytest.fixture(scope="session")
def netcat():
    """OpenBSD netcat (its -N: shut the socket's writing side at the end of stdin)."""
    path = installed_program("nc", "netcat-openbsd")
    usage = subprocess.run([path, "-h"], capture_output=True, text=True).stderr
    if "-N" not in usage:
        pytest.skip("needs OpenBSD netcat (its -N option): apt-get install netcat-openbsd")
    return path


@pytest.fixture(scope="session")
def redis_py():
    """The redis Python client (redis-py), from the test extra."""
    return pytest.importorskip("redis", reason="needs the redis package: pip install '.[test]'")


# ------------------------------------------------------------------------------------ TLS
# Certificates made for the session by trustme (a test CA, nothing committed): the
# server's for localhost/127.0.0.1/::1, and a client certificate for mutual TLS.

@pytest.fixture(scope="session")
def tls_ca():
    trustme = pytest.importorskip("trustme", reason="needs trustme: pip install '.[test]'")
    return trustme.CA()


@pytest.fixture(scope="session")
def tls_server_certificate(tls_ca):
    return tls_ca.issue_cert("localhost", "127.0.0.1", "::1")


@pytest.fixture
def server_context(tls_server_certificate):
    """A server-side ssl.SSLContext with the test CA's certificate for localhost."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls_server_certificate.configure_cert(context)
    return context


@pytest.fixture
def client_context(tls_ca):
    """A client-side ssl.SSLContext that trusts the test CA (and checks the host name)."""
    context = ssl.create_default_context()
    tls_ca.configure_trust(context)
    return context


@pytest.fixture(scope="session")
def tls_files(tls_ca, tls_server_certificate, tmp_path_factory):
    """The test CA's certificate and the server's key and chain as PEM files, for
    programs (openssl s_client, the CLI): a dict of paths."""
    directory = tmp_path_factory.mktemp("tls")
    files = {"ca": directory / "ca.pem", "certfile": directory / "server.pem",
             "keyfile": directory / "server.key"}
    tls_ca.cert_pem.write_to_path(str(files["ca"]))
    tls_server_certificate.private_key_pem.write_to_path(str(files["keyfile"]))
    for blob in tls_server_certificate.cert_chain_pems:
        blob.write_to_path(str(files["certfile"]), append=True)
    return files


@pytest.fixture(scope="session")
def openssl():
    """Debian's openssl program (s_client)."""
    return installed_program("openssl", "openssl")

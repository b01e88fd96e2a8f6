"""Two simpletcp instances behind a real nginx (its stream module, `proxy_protocol on`),
configured as README's "Behind HAProxy or nginx" shows: the callback sees the client's
address. Skipped, saying why, without nginx or its stream module (Debian: nginx-light
and libnginx-mod-stream, which `.ci/run` installs as root)."""
import pathlib
import shutil
import socket
import subprocess
import tempfile

import pytest

from support import (TIMEOUT, assert_each_reply_names_its_client, end_process,
                     two_proxied_who_am_i_servers, wait_for)

pytestmark = pytest.mark.timeout(120)

#: Where Debian's libnginx-mod-stream puts the module (loaded if there: a build with the
#: module compiled in needs no load_module line).
STREAM_MODULE = pathlib.Path("/usr/lib/nginx/modules/ngx_stream_module.so")


def nginx_binary() -> str:
    path = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if path is None:
        pytest.skip("needs nginx (Debian: apt-get install nginx-light libnginx-mod-stream; "
                    ".ci/run installs them as root)")
    return path


def stream_configuration(directory: str, front_port: int, upstream_ports) -> str:
    load = f"load_module {STREAM_MODULE};\n" if STREAM_MODULE.exists() else ""
    servers = " ".join(f"server 127.0.0.1:{port};" for port in upstream_ports)
    # README's stream block, in a foreground nginx whose files are all in `directory`.
    return (f"{load}daemon off;\nmaster_process off;\npid {directory}/nginx.pid;\n"
            f"error_log stderr notice;\nevents {{}}\n"
            f"stream {{\n"
            f"    upstream simpletcp {{ {servers} }}\n"
            f"    server {{ listen 127.0.0.1:{front_port}; proxy_pass simpletcp; "
            f"proxy_protocol on; }}\n"
            f"}}\n")


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Nginx:
    """A foreground nginx proxying a loopback port (``port``) to ``upstream_ports``."""

    def __init__(self, upstream_ports) -> None:
        binary = nginx_binary()
        self.directory = tempfile.mkdtemp(prefix="nginx-")
        config = f"{self.directory}/nginx.conf"
        for _ in range(5):  # nginx binds a port number: another process may take it first
            self.port = unused_port()
            with open(config, "w") as file:
                file.write(stream_configuration(self.directory, self.port, upstream_ports))
            checked = subprocess.run([binary, "-t", "-p", self.directory, "-c", config,
                                      "-e", "stderr"], capture_output=True, text=True,
                                     timeout=TIMEOUT)
            if checked.returncode != 0:
                self.close()
                pytest.skip(f"nginx cannot run this stream configuration (no stream "
                            f"module?): {checked.stderr.strip()[-300:]}")
            self.child = subprocess.Popen([binary, "-p", self.directory, "-c", config,
                                           "-e", "stderr"], stdin=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE, text=True)
            wait_for(lambda: self.child.poll() is not None or self.listening())
            if self.child.poll() is None:
                return
            failure = self.child.stderr.read()
            if "Address already in use" not in failure:
                self.close()
                raise AssertionError(f"nginx exited: {failure}")
        self.close()
        raise AssertionError("no free port for nginx in 5 tries")

    def listening(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT).close()
            return True
        except ConnectionRefusedError:
            return False

    def close(self) -> None:
        child = getattr(self, "child", None)  # none if nginx -t refused the configuration
        if child is not None:
            end_process(child)
            child.stderr.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> "Nginx":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def test_the_callback_sees_the_clients_address_through_nginx(backend):
    with two_proxied_who_am_i_servers(backend) as (s1, s2, seen), \
            Nginx([s1.port, s2.port]) as nginx:
        assert_each_reply_names_its_client(nginx.port, 4)
    # nginx's probe connection (listening()) carries a header too, and is seen by
    # neither callback: it sends nothing after it. Round robin: both served.
    assert len(seen["s1"]) + len(seen["s2"]) == 4 and seen["s1"] and seen["s2"]

"""python -m simpletcp: serve a callback (by import path) or a built-in echo server."""
from __future__ import annotations

import argparse
import importlib
import logging
import re
import sys
from typing import Any, Callable, Dict, List, Optional

from simpletcp import __version__
from simpletcp import _listener, _tls
from simpletcp import framing as _framing
from simpletcp.tcpserver import (BACKENDS, DEFAULT_GRACE_PERIOD, DEFAULT_HIGH_WATER,
                                 DEFAULT_PROXY_HEADER_TIMEOUT, DEFAULT_RECV_BYTES,
                                 DEFAULT_SSL_HANDSHAKE_TIMEOUT,
                                 DEFAULT_SSL_SHUTDOWN_TIMEOUT, TCPServer)

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: What --framing's MODULE:ATTRIBUTE may name as it is; anything else callable is called.
FRAMER_TYPES = (_framing.Lines, _framing.LengthPrefixed, _framing.FixedSize, _framing.Framer)


def echo(queue: Any, data: bytes) -> None:
    """The built-in callback: send every byte back."""
    queue.put(data)


def echo_line(queue: Any, line: bytes) -> None:
    """The built-in echo under --framing lines: the line back, with the newline that
    Lines() took off (without it, the client read its lines run together)."""
    queue.put(line + b"\n")


def echo_length_prefixed(queue: Any, message: bytes) -> None:
    """The built-in echo under --framing length-prefixed: the message back after its
    length, as it came."""
    queue.put(len(message).to_bytes(4, "big") + message)


#: The built-in echo for each --framing that takes off part of what the client sent.
FRAMED_ECHO = {"lines": echo_line, "length-prefixed": echo_length_prefixed}


class TargetError(Exception):
    """The MODULE:CALLABLE argument does not name a callable."""


def load_target(target: str) -> Callable[..., Any]:
    """Import ``package.module:attribute.path`` and return that callable."""
    obj = load_object(target)
    if not callable(obj):
        raise TargetError(f"{target!r} is not callable")
    return obj  # type: ignore[no-any-return]


def load_object(target: str) -> Any:
    """Import ``package.module:attribute.path`` and return that object."""
    module_name, sep, attribute_path = target.partition(":")
    if not sep or not _dotted_name(module_name) or not _dotted_name(attribute_path):
        raise TargetError(f"target must look like MODULE:CALLABLE (dotted Python names), "
                          f"got {target!r}")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise TargetError(f"cannot import module {module_name!r}: {exc}") from exc
    for name in attribute_path.split("."):
        try:
            obj = getattr(obj, name)
        except AttributeError:
            raise TargetError(f"module {module_name!r} has no attribute {attribute_path!r}") from None
    return obj


def load_framing(spec: str, max_length: Optional[int]) -> Any:
    """--framing and --max-length: the framer for TCPServer's ``framing``.

    ``lines`` and ``length-prefixed`` (a 4-byte big-endian length) take --max-length;
    ``fixed:SIZE`` is messages of SIZE bytes; MODULE:ATTRIBUTE is the application's
    framer, or a class or function that makes one when called with no arguments (each
    worker gets its own copy at the fork). TCPServer checks what comes out."""
    if spec in ("lines", "length-prefixed"):
        framer_class = _framing.Lines if spec == "lines" else _framing.LengthPrefixed
        if max_length is None:
            return framer_class()
        return framer_class(max_length=max_length)
    if max_length is not None:
        raise ValueError("max_length applies to --framing lines and length-prefixed; a "
                         "framer of fixed size or of the application's has its own")
    kind, _, size = spec.partition(":")
    if kind == "fixed":
        if not size.isdigit():
            raise ValueError(f"framing fixed:SIZE needs SIZE in bytes, got {spec!r}")
        try:
            return _framing.FixedSize(int(size))
        except ValueError as error:
            raise ValueError(f"framing {spec}: {error}") from None
    try:
        framer = load_object(spec)
    except TargetError as error:
        raise ValueError(f"framing must be lines, length-prefixed, fixed:SIZE or "
                         f"MODULE:ATTRIBUTE: {error}") from None
    if not isinstance(framer, FRAMER_TYPES) and callable(framer):
        try:
            framer = framer()
        except TypeError as error:
            raise TypeError(f"framing {spec} is not a framer, nor a class or function "
                            f"that makes one when called with no arguments: {error}") from None
    if framer is None:  # TCPServer(framing=None) would serve unframed, as if not asked
        raise TypeError(f"framing {spec} gave None, not a framer")
    return framer


def _dotted_name(text: str) -> bool:
    return all(part.isidentifier() for part in text.split("."))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simpletcp",
        description="Serve a read_callback(queue, data) over TCP; with no target, an echo server.",
    )
    parser.add_argument(
        "target", nargs="?", metavar="MODULE:CALLABLE",
        help="the callback to serve, by import path (e.g. myapp.handlers:echo); "
             "default: a built-in echo",
    )
    parser.add_argument("--on-connect", default=None, metavar="MODULE:CALLABLE",
                        help="called with each new connection's queue (or ip, queue) "
                             "before its first read; what it puts is sent first")
    parser.add_argument("--on-disconnect", default=None, metavar="MODULE:CALLABLE",
                        help="called with each closed connection's queue (or ip, queue); "
                             "queue.close_reason says why it closed")
    parser.add_argument("--mode", default=None,
                        help="'localhost' (127.0.0.1), 'public' (0.0.0.0), an address "
                             "to bind, or unix:PATH for a Unix socket (default: localhost)")
    parser.add_argument("--port", type=int, default=None,
                        help="port to listen on; 0 picks a free one (default: 5000)")
    parser.add_argument("--fd", default=None, metavar="N|systemd",
                        help="serve the listening socket open on descriptor N (inherited), "
                             "or the one systemd passed (socket activation: LISTEN_FDS), "
                             "instead of binding --mode/--port")
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes serving the socket, each with its own "
                             "callback state (default: 1, served in this process)")
    parser.add_argument("--reuse-port", action="store_true",
                        help="set SO_REUSEPORT, so that other processes can bind the same "
                             "port")
    parser.add_argument("--unix-permissions", type=_octal, default=None, metavar="OCTAL",
                        help="permissions of a unix:PATH socket file, e.g. 660 "
                             "(default: as the umask leaves them)")
    parser.add_argument("--proxy-protocol", action="store_true",
                        help="every connection starts with a PROXY protocol v1/v2 header "
                             "(HAProxy send-proxy, nginx proxy_protocol): the callback's ip "
                             "is the client's it names")
    parser.add_argument("--proxy-header-timeout", type=float,
                        default=DEFAULT_PROXY_HEADER_TIMEOUT,
                        help="seconds a connection has to send its PROXY header "
                             f"(default: {DEFAULT_PROXY_HEADER_TIMEOUT:g})")
    # gunicorn's names (the issue's); uvicorn's --ssl-* spellings work too.
    parser.add_argument("--framing", default=None,
                        metavar="lines|length-prefixed|fixed:SIZE|MODULE:ATTRIBUTE",
                        help="call the callback once per whole message: per line, per "
                             "message after a 4-byte big-endian length, per SIZE bytes, or "
                             "as the application's framer (or what a class or function "
                             "named so returns) cuts them (default: as bytes arrive)")
    parser.add_argument("--max-length", type=int, default=None,
                        help="longest message --framing lines or length-prefixed accepts; "
                             "a longer one closes its connection (default: 65536)")
    parser.add_argument("--certfile", "--ssl-certfile", default=None, metavar="PEM",
                        help="serve TLS: the server's certificate chain (PEM)")
    parser.add_argument("--keyfile", "--ssl-keyfile", default=None, metavar="PEM",
                        help="its private key (PEM; default: in --certfile)")
    parser.add_argument("--keyfile-password", "--ssl-keyfile-password", default=None,
                        metavar="PASSWORD",
                        help="the password of an encrypted private key (note: other "
                             "users may see a process's arguments)")
    parser.add_argument("--ca-certs", "--ssl-ca-certs", default=None, metavar="PEM",
                        help="CA certificates to verify client certificates with; a "
                             "client may present one (see --require-client-cert)")
    parser.add_argument("--require-client-cert", action="store_true",
                        help="mutual TLS: refuse clients without a certificate that "
                             "--ca-certs verifies")
    parser.add_argument("--ssl-handshake-timeout", type=float,
                        default=DEFAULT_SSL_HANDSHAKE_TIMEOUT,
                        help="seconds a TLS handshake may take "
                             f"(default: {DEFAULT_SSL_HANDSHAKE_TIMEOUT:g})")
    parser.add_argument("--ssl-shutdown-timeout", type=float,
                        default=DEFAULT_SSL_SHUTDOWN_TIMEOUT,
                        help="seconds a TLS connection waits for the peer's close_notify "
                             f"after its own (default: {DEFAULT_SSL_SHUTDOWN_TIMEOUT:g})")
    parser.add_argument("--recv-bytes", type=int, default=DEFAULT_RECV_BYTES,
                        help=f"most bytes handed to one callback (default: {DEFAULT_RECV_BYTES})")
    parser.add_argument("--backlog", type=int, default=None,
                        help="listen backlog, the original maximum_connections "
                             "(default: socket.SOMAXCONN)")
    parser.add_argument("--backend", choices=("auto",) + tuple(BACKENDS), default="auto",
                        help="poller: epoll or poll (default: auto, epoll where available)")
    parser.add_argument("--grace-period", type=float, default=DEFAULT_GRACE_PERIOD,
                        help="seconds to finish sending queued replies (and pending replies of "
                             "workers) on shutdown "
                             f"(default: {DEFAULT_GRACE_PERIOD:g})")
    parser.add_argument("--high-water", type=int, default=DEFAULT_HIGH_WATER,
                        help="unsent bytes per connection above which reading from it "
                             f"pauses (default: {DEFAULT_HIGH_WATER})")
    parser.add_argument("--low-water", type=int, default=None,
                        help="unsent bytes below which reading resumes "
                             "(default: a quarter of --high-water)")
    parser.add_argument("--connection-limit", type=int, default=None,
                        help="most connections served at once; more are closed at once "
                             "(default: no limit)")
    parser.add_argument("--idle-timeout", type=float, default=None,
                        help="close connections idle for this many seconds (default: never)")
    parser.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS,
                        help="level of the 'simpletcp' logger's output (default: INFO)")
    parser.add_argument("--version", action="version", version=f"simpletcp {__version__}")
    return parser


#: TCPServer arguments whose flag is not --the-same-name.
FLAG_OF_ARGUMENT = {"maximum_connections": "--backlog", "read_callback": "MODULE:CALLABLE",
                    "sock": "--fd", "ssl": "--certfile"}


def _octal(text: str) -> int:
    """--unix-permissions: file permissions in octal, as chmod takes them (660, 0o660)."""
    try:
        return int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not octal permissions: {text!r}") from None


def listening_socket(fd: str) -> Any:
    """The socket --fd names: a descriptor number, or systemd's (socket activation)."""
    if fd == "systemd":
        sockets = _listener.systemd_sockets()
        if len(sockets) != 1:
            raise ValueError(f"fd systemd: expected one socket from systemd (LISTEN_FDS and "
                             f"LISTEN_PID for this process), got {len(sockets)}")
        return sockets[0]
    if not fd.isdigit():
        raise ValueError(f"fd must be a descriptor number or 'systemd', got {fd!r}")
    return _listener.from_descriptor(int(fd))


def _naming_the_flag(message: str) -> str:
    """TCPServer's error message (it starts with the argument's name), for the flag."""
    argument = re.split(r"\W", message, maxsplit=1)[0]
    flag = FLAG_OF_ARGUMENT.get(argument, "--" + argument.replace("_", "-"))
    return f"argument {flag}: {message}"


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    callback: Callable[..., Any] = echo
    events: Dict[str, Optional[Callable[..., Any]]] = {"on_connect": None,
                                                      "on_disconnect": None}
    if args.target or args.on_connect or args.on_disconnect:
        # Like uvicorn: the working directory is importable, so `python -m simpletcp app:cb`
        # finds app.py where it is run.
        if "" not in sys.path:
            sys.path.insert(0, "")
    if args.target:
        try:
            callback = load_target(args.target)
        except TargetError as exc:
            parser.error(str(exc))  # exits with status 2
    for argument in events:
        target = getattr(args, argument)
        if target:
            try:
                events[argument] = load_target(target)
            except TargetError as exc:
                parser.error(_naming_the_flag(f"{argument}: {exc}"))

    if args.certfile is None:
        for given, flag in ((args.keyfile, "--keyfile"),
                            (args.keyfile_password is not None, "--keyfile-password"),
                            (args.ca_certs, "--ca-certs"),
                            (args.require_client_cert, "--require-client-cert")):
            if given:
                parser.error(f"argument {flag}: needs --certfile (the server's certificate)")
    if args.require_client_cert and args.ca_certs is None:
        parser.error("argument --require-client-cert: needs --ca-certs, the CA "
                     "certificates that client certificates are verified against")
    if args.fd is not None and (args.mode is not None or args.port is not None):
        parser.error("argument --fd: the socket is already bound: give --fd, or "
                     "--mode/--port, not both")
    try:
        sock = None
        context = None
        if args.certfile is not None:
            context = _tls.server_context(args.certfile, args.keyfile, args.ca_certs,
                                          args.require_client_cert, args.keyfile_password)
        framing = None
        if args.framing is not None:
            framing = load_framing(args.framing, args.max_length)
            if callback is echo:
                callback = FRAMED_ECHO.get(args.framing, echo)
        elif args.max_length is not None:
            raise ValueError("max_length needs --framing lines or length-prefixed")
        mode, port = args.mode, args.port
        if args.fd is not None:
            sock = listening_socket(args.fd)
        else:
            mode = "localhost" if mode is None else mode
            if port is None:
                port = 0 if _listener.unix_path(mode) is not None else 5000
        server = TCPServer(
            mode, port, callback, args.backlog, args.recv_bytes,
            backend=args.backend, grace_period=args.grace_period,
            high_water=args.high_water, low_water=args.low_water,
            connection_limit=args.connection_limit, idle_timeout=args.idle_timeout,
            workers=args.workers, reuse_port=args.reuse_port, sock=sock,
            unix_permissions=args.unix_permissions, proxy_protocol=args.proxy_protocol,
            proxy_header_timeout=args.proxy_header_timeout,
            on_connect=events["on_connect"], on_disconnect=events["on_disconnect"],
            framing=framing, ssl=context, ssl_handshake_timeout=args.ssl_handshake_timeout,
            ssl_shutdown_timeout=args.ssl_shutdown_timeout,
        )
    except (TypeError, ValueError) as exc:
        parser.error(_naming_the_flag(str(exc)))
    except OSError as exc:
        print(f"simpletcp: {exc}", file=sys.stderr)
        return 1

    # run() serves the main thread, so SIGTERM and Ctrl-C both stop it gracefully.
    print(f"simpletcp: listening on {server._where()}", flush=True)
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""An HTTP/1.1 keep-alive responder, served by simpletcp.

Usage: python server.py [PORT]    (then: curl -i http://127.0.0.1:PORT/)

GET (and HEAD) of ``/`` answers "Hello, world!" with a Content-Length; any other path is
404, any other method 405. Connections are kept alive (HTTP/1.1's default; HTTP/1.0 with
``Connection: keep-alive``) until the client sends ``Connection: close``, which is
honoured: the response says so and the connection is closed once it is sent. Pipelined
requests are answered in order, all those of one read in one write. A request body
announced by Content-Length is read and skipped; a chunked body is refused (501).
Garbage, or a request head larger than MAX_HEAD_BYTES, gets a 400 (431) and the
connection is closed, so no client can make the server buffer more than that.

What simpletcp does for it: ``HttpFramer`` (a ``simpletcp.framing.Framer``) says where
each request ends (its head, then its Content-Length body) and parses the head; the
server keeps each connection's unfinished bytes and calls ``on_request`` once per whole
request. What ``on_request`` returns is the response.
"""
import sys
from typing import Any, Dict, NamedTuple, Optional, Tuple, Union

from simpletcp.framing import Framer, NeedMore
from simpletcp.tcpserver import ConnectionQueue, TCPServer

MAX_HEAD_BYTES = 8 * 1024
MAX_BODY_BYTES = 64 * 1024
BODY = b"Hello, world!\n"
SERVER = b"simpletcp-example"


def response(status: bytes, body: bytes, keep_alive: bool, head_only: bool = False,
             extra: bytes = b"") -> bytes:
    connection = b"keep-alive" if keep_alive else b"close"
    return (b"HTTP/1.1 %s\r\nServer: %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
            b"Connection: %s\r\n%s\r\n%s"
            % (status, SERVER, len(body), connection, extra, b"" if head_only else body))


class BadRequest(Exception):
    """The request cannot be understood: answer (status, body), then close."""

    def __init__(self, status: bytes, reason: str):
        super().__init__(reason)
        self.status = status


def parse_head(head: bytes) -> Tuple[bytes, bytes, bytes, Dict[bytes, bytes]]:
    """(method, target, version, headers) of a request head without its blank line;
    header names lowercased."""
    lines = head.split(b"\r\n")
    method, target, version = parse_request_line(lines[0])
    headers: Dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            raise BadRequest(b"400 Bad Request", "malformed header")
        name, value = name.lower(), value.strip()
        if name == b"content-length" and headers.get(name, value) != value:
            # Which one a proxy in front believed is unknown: request smuggling.
            raise BadRequest(b"400 Bad Request", "conflicting Content-Length headers")
        headers[name] = value
    return method, target, version, headers


def parse_request_line(line: bytes) -> Tuple[bytes, bytes, bytes]:
    """(method, target, version) of "GET / HTTP/1.1", or BadRequest."""
    try:
        method, target, version = line.split(b" ")
    except ValueError:
        raise BadRequest(b"400 Bad Request", "malformed request line") from None
    if version not in (b"HTTP/1.1", b"HTTP/1.0") or not method.isalpha() or not target:
        raise BadRequest(b"400 Bad Request", "malformed request line")
    return method, target, version


def keeps_alive(version: bytes, headers: Dict[bytes, bytes]) -> bool:
    tokens = {token.strip().lower() for token in headers.get(b"connection", b"").split(b",")}
    if version == b"HTTP/1.0":
        return b"keep-alive" in tokens
    return b"close" not in tokens


def body_length(headers: Dict[bytes, bytes]) -> int:
    if b"transfer-encoding" in headers:
        raise BadRequest(b"501 Not Implemented", "chunked request bodies are not supported")
    value = headers.get(b"content-length", b"0")
    if not value.isdigit():
        raise BadRequest(b"400 Bad Request", "malformed Content-Length")
    if int(value) > MAX_BODY_BYTES:
        raise BadRequest(b"413 Content Too Large", "request body too large")
    return int(value)


def answer(method: bytes, target: bytes, keep_alive: bool) -> bytes:
    if method not in (b"GET", b"HEAD"):
        return response(b"405 Method Not Allowed", b"Method not allowed\n", keep_alive,
                        extra=b"Allow: GET, HEAD\r\n")
    if target != b"/":
        return response(b"404 Not Found", b"Not found\n", keep_alive, method == b"HEAD")
    return response(b"200 OK", BODY, keep_alive, method == b"HEAD")


class Request(NamedTuple):
    method: bytes
    target: bytes
    keep_alive: bool


class HttpFramer(Framer):
    """Where each request ends, and its head parsed: the server calls ``frame`` with a
    connection's unparsed bytes, and hands ``on_request`` each whole Request. A request
    that cannot be understood is handed on as the BadRequest covering all that arrived,
    so that it is answered before the connection closes."""

    def __init__(self) -> None:
        super().__init__(max_length=MAX_HEAD_BYTES + 4 + MAX_BODY_BYTES)

    def frame(self, data: bytes, start: int) -> Union[None, NeedMore, Tuple[int, object]]:
        try:
            return self.frame_request(data, start)
        except BadRequest as problem:
            return len(data) - start, problem

    def frame_request(self, data: bytes, start: int) -> Union[None, NeedMore, Tuple[int, Request]]:
        head_end = data.find(b"\r\n\r\n", start)
        if head_end < 0:
            if len(data) - start > MAX_HEAD_BYTES:
                raise BadRequest(b"431 Request Header Fields Too Large", "head too large")
            line_end = data.find(b"\n", start)
            if line_end >= 0:  # garbage is answered without waiting for a head
                parse_request_line(data[start:line_end].rstrip(b"\r"))
            return None
        if head_end - start > MAX_HEAD_BYTES:
            raise BadRequest(b"431 Request Header Fields Too Large", "head too large")
        method, target, version, headers = parse_head(data[start:head_end])
        request_end = head_end + 4 + body_length(headers)
        if request_end > len(data):
            return NeedMore(request_end - len(data))  # its body is still arriving
        return request_end - start, Request(method, target, keeps_alive(version, headers))


class HttpResponder:
    """The responder's callback; ``keywords()`` are what TCPServer needs to serve it."""

    def __init__(self) -> None:
        self.answered = 0  # requests answered, for monitoring

    def keywords(self) -> Dict[str, Any]:
        return dict(framing=HttpFramer())

    def on_request(self, queue: ConnectionQueue,
                   request: Union[Request, BadRequest]) -> Optional[bytes]:
        """One whole request (HttpFramer): the response."""
        if isinstance(request, BadRequest):
            queue.put(response(request.status, f"{request}\n".encode(), False))
            queue.shutdown()  # the rest of what it sent is dropped unread
            return None
        self.answered += 1
        reply = answer(request.method, request.target, request.keep_alive)
        if request.keep_alive:
            return reply
        queue.put(reply)
        queue.shutdown()  # what follows is not answered
        return None


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    app = HttpResponder()
    server = TCPServer("localhost", port, app.on_request, **app.keywords())
    print(f"HTTP responder listening on {server.ip}:{server.port}", flush=True)
    server.run()

"""An HTTP/1.1 keep-alive responder, served by simpletcp.

Usage: python server.py [PORT]    (then: curl -i http://127.0.0.1:PORT/)

GET (and HEAD) of ``/`` answers "Hello, world!" with a Content-Length; any other path is
404, any other method 405. Connections are kept alive (HTTP/1.1's default; HTTP/1.0 with
``Connection: keep-alive``) until the client sends ``Connection: close``, which is
honoured: the response says so and the connection is closed once it is sent. Pipelined
requests are answered in order, all those of one read in one write. A request body
announced by Content-Length is read and skipped; a chunked body is refused (501).
Garbage, or a request head larger than MAX_HEAD_BYTES, gets a 400 and the connection is
closed, so no client can make the server buffer more than that.

Each connection keeps its unparsed bytes in a WeakKeyDictionary keyed by its queue: the
entry goes when the connection does.
"""
import sys
import weakref
from typing import Dict, Tuple

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
        headers[name.lower()] = value.strip()
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


class HttpResponder:
    """The read callback: frames HTTP/1.1 requests per connection and answers them."""

    def __init__(self) -> None:
        # queue -> its bytes not yet parsed. Weak keys: gone with the connection.
        self.unparsed: "weakref.WeakKeyDictionary[ConnectionQueue, bytes]" = (
            weakref.WeakKeyDictionary())
        self.answered = 0  # requests answered, for monitoring

    def __call__(self, queue: ConnectionQueue, data: bytes) -> None:
        buffer = self.unparsed.pop(queue, b"") + data
        responses, consumed, keep_alive = self.answer_requests(buffer)
        if responses:
            queue.put(responses)
        if not keep_alive:
            queue.shutdown()  # the rest of what it sent is dropped unread
        elif consumed < len(buffer):
            self.unparsed[queue] = buffer[consumed:]

    def answer_requests(self, buffer: bytes) -> Tuple[bytes, int, bool]:
        """Answer every whole request at the start of `buffer`: (the responses, bytes
        consumed, whether the connection stays open)."""
        responses = []
        position = 0
        keep_alive = True
        try:
            while keep_alive:
                head_end = buffer.find(b"\r\n\r\n", position)
                if head_end < 0:
                    if len(buffer) - position > MAX_HEAD_BYTES:
                        raise BadRequest(b"431 Request Header Fields Too Large", "head too large")
                    line_end = buffer.find(b"\n", position)
                    if line_end >= 0:  # garbage is answered without waiting for a head
                        parse_request_line(buffer[position:line_end].rstrip(b"\r"))
                    break
                if head_end - position > MAX_HEAD_BYTES:
                    raise BadRequest(b"431 Request Header Fields Too Large", "head too large")
                method, target, version, headers = parse_head(buffer[position:head_end])
                request_end = head_end + 4 + body_length(headers)
                if request_end > len(buffer):
                    break  # its body is still arriving
                keep_alive = keeps_alive(version, headers)
                responses.append(answer(method, target, keep_alive))
                self.answered += 1
                position = request_end
        except BadRequest as problem:
            responses.append(response(problem.status, f"{problem}\n".encode(), False))
            keep_alive = False
        return b"".join(responses), position, keep_alive


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    server = TCPServer("localhost", port, HttpResponder())
    print(f"HTTP responder listening on {server.ip}:{server.port}", flush=True)
    server.run()

"""The framed programs of issue 12 as an asyncio.Protocol with hand-written framing, the
idiomatic fast way on uvloop (--loop uvloop, the default) or asyncio's own loop:
data_received appends to the connection's buffer (an attribute of the protocol, which
lives exactly as long as the connection), answers every whole message, and writes one
read's answers with one transport.write().

  --program lines   answers every "\\n"-terminated line with itself (W5)
  --program resp    the Redis-compatible store of examples/kvstore (redis-benchmark)
  --program http    the HTTP/1.1 responder of examples/http (wrk)

The store and the responder, framing included, are the examples' own, so that only
the I/O and where each connection's state lives differ from simpletcp's. Prints the
bound port as the first line of stdout, then serves until killed.
"""
import argparse
import asyncio

from framing_common import load_example

MAX_LINE_BYTES = 64 * 1024


class LineEcho(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.buffer = b""

    def data_received(self, data):
        if self.buffer:
            data = self.buffer + data
        start = 0
        answers = []
        newline = data.find(b"\n")
        while newline >= 0:
            answers.append(data[start:newline + 1])
            start = newline + 1
            newline = data.find(b"\n", start)
        if answers:
            self.transport.write(b"".join(answers))
        self.buffer = data[start:]
        if len(self.buffer) > MAX_LINE_BYTES:
            self.transport.close()


def resp_protocol():
    kvstore = load_example("kvstore")
    commands = kvstore.KeyValueServer()  # the store, and MULTI/EXEC kept per connection

    class RespStore(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            self.buffer = b""
            self.needed = 0  # parse again once the buffer is this long
            commands.open_session(self)  # the protocol object carries its MULTI

        def data_received(self, data):
            buffer = self.buffer + data if self.buffer else data
            if len(buffer) < self.needed:
                self.buffer = buffer  # a large value still arriving: not parsed again
                return
            replies = []
            position = 0
            close = False
            try:
                while position < len(buffer) and not close:
                    arguments, end = kvstore.parse_request(buffer, position)
                    if arguments is None:
                        self.needed = end - position
                        break
                    position = end
                    if arguments:
                        reply, close = commands.execute(self, arguments)
                        replies.append(reply)
            except kvstore.ProtocolError as problem:
                replies.append(kvstore.error(f"ERR Protocol error: {problem}"))
                close = True
            if replies:
                self.transport.write(b"".join(replies))
            self.buffer = buffer[position:]
            if not self.buffer:
                self.needed = 0
            if close or len(self.buffer) > kvstore.MAX_REQUEST_BYTES:
                self.transport.close()

    return RespStore


def http_protocol():
    http = load_example("http")

    class HttpResponder(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            self.buffer = b""

        def data_received(self, data):
            buffer = self.buffer + data if self.buffer else data
            responses = []
            position = 0
            keep_alive = True
            try:
                while keep_alive:
                    head_end = buffer.find(b"\r\n\r\n", position)
                    if head_end < 0:
                        if len(buffer) - position > http.MAX_HEAD_BYTES:
                            raise http.BadRequest(b"431 Request Header Fields Too Large",
                                                  "head too large")
                        break
                    method, target, version, headers = http.parse_head(buffer[position:head_end])
                    request_end = head_end + 4 + http.body_length(headers)
                    if request_end > len(buffer):
                        break  # its body is still arriving
                    keep_alive = http.keeps_alive(version, headers)
                    responses.append(http.answer(method, target, keep_alive))
                    position = request_end
            except http.BadRequest as problem:
                responses.append(http.response(problem.status, f"{problem}\n".encode(), False))
                keep_alive = False
            if responses:
                self.transport.write(b"".join(responses))
            if not keep_alive:
                self.transport.close()
            self.buffer = buffer[position:]

    return HttpResponder


async def serve(protocol, port, backlog):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(protocol, "127.0.0.1", port, backlog=backlog)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--program", choices=("lines", "resp", "http"), required=True)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--backlog", type=int, default=1024)
    args = parser.parse_args()
    make = {"lines": lambda: LineEcho, "resp": resp_protocol, "http": http_protocol}
    protocol = make[args.program]()
    if args.loop == "uvloop":
        import uvloop
        uvloop.run(serve(protocol, args.port, args.backlog))
    else:
        asyncio.run(serve(protocol, args.port, args.backlog))


if __name__ == "__main__":
    main()

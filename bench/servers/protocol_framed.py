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
    commands = kvstore.KeyValueServer()  # the store, its framing, MULTI/EXEC per session

    class RespStore(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            self.session = kvstore.Session()

        def data_received(self, data):
            replies, close = commands.answer_requests(self.session, data)
            if replies:
                self.transport.write(replies)
            if close:
                self.transport.close()

    return RespStore


def http_protocol():
    responder = load_example("http").HttpResponder()  # its framing and answers

    class HttpResponder(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            self.buffer = b""

        def data_received(self, data):
            buffer = self.buffer + data
            responses, consumed, keep_alive = responder.answer_requests(buffer)
            if responses:
                self.transport.write(responses)
            if not keep_alive:
                self.transport.close()
            self.buffer = buffer[consumed:]

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

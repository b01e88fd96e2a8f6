"""Echo server on asyncio's low-level API: an asyncio.Protocol writing back what it receives.

Prints the bound port as the first line of stdout, then serves until killed.
uvloop_protocol.py runs the same protocol on uvloop's event loop.
"""
import argparse
import asyncio

from tls_context import add_tls_arguments, server_context


class EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


def parse_args(description):
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--backlog", type=int, default=1024)
    add_tls_arguments(parser)
    return parser.parse_args()


async def serve(port, backlog, ssl=None):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(EchoProtocol, "127.0.0.1", port, backlog=backlog,
                                      ssl=ssl)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


def main():
    args = parse_args(__doc__)
    asyncio.run(serve(args.port, args.backlog, server_context(args)))


if __name__ == "__main__":
    main()

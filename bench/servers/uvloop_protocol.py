"""Echo server: the asyncio.Protocol of asyncio_protocol.py, run on uvloop's event loop.

Prints the bound port as the first line of stdout, then serves until killed.
"""
import uvloop

from asyncio_protocol import parse_args, serve
from tls_context import server_context


def main():
    args = parse_args(__doc__)
    uvloop.run(serve(args.port, args.backlog, server_context(args)))


if __name__ == "__main__":
    main()

"""Echo server on asyncio's high-level streams API (StreamReader/StreamWriter).

Prints the bound port as the first line of stdout, then serves until killed.
"""
import argparse
import asyncio

RECV_BYTES = 2048


async def echo(reader, writer):
    try:
        while data := await reader.read(RECV_BYTES):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def serve(port, backlog):
    server = await asyncio.start_server(echo, "127.0.0.1", port, backlog=backlog)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--backlog", type=int, default=1024)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.backlog))


if __name__ == "__main__":
    main()

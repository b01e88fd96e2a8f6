"""The framed programs of issue 12 on asyncio streams, as their documentation teaches:
one coroutine per connection reading whole messages with readline() and readexactly(),
writing each answer with write() and drain().

  --program lines   answers every "\\n"-terminated line with itself (W5)
  --program resp    the Redis-compatible store of examples/kvstore (redis-benchmark)
  --program http    the HTTP/1.1 responder of examples/http (wrk)

The store's commands and the responder's answers are the examples' own. Prints the
bound port as the first line of stdout, then serves until killed.
"""
import argparse
import asyncio
import types

from framing_common import load_example

LIMIT = 64 * 1024  # the StreamReader's line limit: a longer line is an error


async def line_echo(reader, writer):
    try:
        while line := await reader.readline():
            writer.write(line)
            await writer.drain()
    except (ConnectionError, asyncio.LimitOverrunError, ValueError):
        pass
    finally:
        writer.close()


def resp_handler():
    kvstore = load_example("kvstore")
    commands = kvstore.KeyValueServer()

    async def read_command(reader):
        line = await reader.readline()
        if not line:
            return None
        if not line.startswith(b"*"):
            return line.split()  # an inline command
        arguments = []
        for _ in range(int(line[1:])):
            header = await reader.readline()
            if not header.startswith(b"$"):
                raise kvstore.ProtocolError("expected '$'")
            length = int(header[1:])
            if not 0 <= length <= kvstore.MAX_REQUEST_BYTES:
                raise kvstore.ProtocolError("invalid bulk length")
            arguments.append((await reader.readexactly(length + 2))[:-2])
        return arguments

    async def serve_store(reader, writer):
        session = types.SimpleNamespace()  # its MULTI, as the store keeps it on a queue
        commands.open_session(session)
        try:
            while (arguments := await read_command(reader)) is not None:
                if not arguments:
                    continue
                reply, close = commands.execute(session, arguments)
                writer.write(reply)
                await writer.drain()
                if close:
                    break
        except kvstore.ProtocolError as problem:
            writer.write(kvstore.error(f"ERR Protocol error: {problem}"))
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ValueError):
            pass
        finally:
            writer.close()

    return serve_store


def http_handler():
    http = load_example("http")

    async def serve_http(reader, writer):
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    break
                try:
                    method, target, version, headers = http.parse_head(head[:-4])
                    body = http.body_length(headers)
                except http.BadRequest as problem:
                    writer.write(http.response(problem.status, f"{problem}\n".encode(), False))
                    break
                if body:
                    await reader.readexactly(body)
                keep_alive = http.keeps_alive(version, headers)
                writer.write(http.answer(method, target, keep_alive))
                await writer.drain()
                if not keep_alive:
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    return serve_http


async def serve(handler, port, backlog):
    server = await asyncio.start_server(handler, "127.0.0.1", port, backlog=backlog, limit=LIMIT)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--program", choices=("lines", "resp", "http"), required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--backlog", type=int, default=1024)
    args = parser.parse_args()
    handler = {"lines": lambda: line_echo, "resp": resp_handler, "http": http_handler}[args.program]()
    asyncio.run(serve(handler, args.port, args.backlog))


if __name__ == "__main__":
    main()

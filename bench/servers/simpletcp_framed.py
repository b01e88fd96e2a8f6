"""The framed programs of issue 12 on simpletcp. By default as a user wrote them before
compiled framing: the read callback buffers each connection's unfinished message itself.

  --program lines   answers every "\\n"-terminated line with itself (W5)
  --program resp    the Redis-compatible store of examples/kvstore (redis-benchmark)
  --program http    the HTTP/1.1 responder of examples/http (wrk)

  --framing compiled  the loop frames, and the callback returns each answer:
                      lines with TCPServer(framing=Lines(...)); resp with a framer
                      written in Python on simpletcp.framing.Framer over the store's
                      own parser (the callback gets the parsed command)

Prints the bound port as the first line of stdout, then serves until killed.
"""
import argparse
import weakref

from framing_common import load_example
from simpletcp.framing import Framer, FramingError, Lines, NeedMore
from simpletcp.tcpserver import TCPServer

MAX_LINE_BYTES = 64 * 1024


class LineEcho:
    """Each line answered by its own put(); the loop gathers one read's answers into one
    sendmsg(). The unfinished line waits in a table keyed weakly by the queue."""

    def __init__(self):
        self.unfinished = weakref.WeakKeyDictionary()

    def __call__(self, queue, data):
        rest = self.unfinished.pop(queue, None)
        if rest is not None:
            data = rest + data
        start = 0
        end = data.find(b"\n")
        while end >= 0:
            queue.put(data[start:end + 1])
            start = end + 1
            end = data.find(b"\n", start)
        if start < len(data):
            if len(data) - start > MAX_LINE_BYTES:
                queue.shutdown()
                return
            self.unfinished[queue] = data[start:]


def answer_line(queue, line):
    """With framing=Lines(keep_delimiter=True): each call is one line; its answer,
    returned, is queued by the loop."""
    return line


def resp_on_compiled_framing():
    """(callback, framing) of the store of examples/kvstore with the loop's buffering: a
    Framer whose frame() is the store's own parse_request, so the callback gets each
    command parsed. MULTI's per-connection state is an attribute of the queue, made
    by on_connect."""
    kvstore = load_example("kvstore")
    store = kvstore.KeyValueServer()

    class RespRequests(Framer):
        def frame(self, data, start):
            try:
                arguments, end = kvstore.parse_request(data, start)
            except kvstore.ProtocolError as problem:
                raise FramingError(str(problem)) from None
            if arguments is None:
                return NeedMore(end - len(data))
            return end - start, arguments

    def open_session(queue):
        queue.session = kvstore.Session()

    def execute(queue, arguments):
        if not arguments:
            return None  # an empty inline line, as redis ignores it
        reply, close = store.execute(queue.session, arguments)
        if close:
            queue.put(reply)
            queue.shutdown()
            return None
        return reply

    return execute, RespRequests(max_length=kvstore.MAX_REQUEST_BYTES), open_session


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--program", choices=("lines", "resp", "http"), required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--backlog", type=int, default=1024)
    parser.add_argument("--backend", choices=["epoll", "poll"], default="epoll")
    parser.add_argument("--framing", choices=["callback", "compiled"], default="callback")
    args = parser.parse_args()
    framing = on_connect = None
    if args.framing == "compiled" and args.program == "lines":
        callback = answer_line
        framing = Lines(keep_delimiter=True, max_length=MAX_LINE_BYTES)
    elif args.framing == "compiled" and args.program == "resp":
        callback, framing, on_connect = resp_on_compiled_framing()
    elif args.framing == "compiled":
        parser.error("--framing compiled is for --program lines or resp")
    elif args.program == "lines":
        callback = LineEcho()
    elif args.program == "resp":
        callback = load_example("kvstore").KeyValueServer()
    else:
        callback = load_example("http").HttpResponder()
    server = TCPServer("localhost", args.port, callback, maximum_connections=args.backlog,
                       backend=args.backend, framing=framing, on_connect=on_connect)
    print(server.port, flush=True)
    server.run()


if __name__ == "__main__":
    main()

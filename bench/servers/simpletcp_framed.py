"""The framed programs of issue 12 on simpletcp. By default as a user wrote them before
compiled framing: the read callback buffers each connection's unfinished message itself.

  --program lines   answers every "\\n"-terminated line with itself (W5)
  --program resp    the Redis-compatible store of examples/kvstore (redis-benchmark)
  --program http    the HTTP/1.1 responder of examples/http (wrk)

  --framing compiled  (lines only) the loop frames: TCPServer(framing=Lines(...)), and
                      the callback returns each line as its answer

Prints the bound port as the first line of stdout, then serves until killed.
"""
import argparse
import weakref

from framing_common import load_example
from simpletcp.framing import Lines
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


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--program", choices=("lines", "resp", "http"), required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--backlog", type=int, default=1024)
    parser.add_argument("--backend", choices=["epoll", "poll"], default="epoll")
    parser.add_argument("--framing", choices=["callback", "compiled"], default="callback")
    args = parser.parse_args()
    framing = None
    if args.framing == "compiled":
        if args.program != "lines":
            parser.error("--framing compiled is for --program lines")
        callback = answer_line
        framing = Lines(keep_delimiter=True, max_length=MAX_LINE_BYTES)
    elif args.program == "lines":
        callback = LineEcho()
    elif args.program == "resp":
        callback = load_example("kvstore").KeyValueServer()
    else:
        callback = load_example("http").HttpResponder()
    server = TCPServer("localhost", args.port, callback, maximum_connections=args.backlog,
                       backend=args.backend, framing=framing)
    print(server.port, flush=True)
    server.run()


if __name__ == "__main__":
    main()

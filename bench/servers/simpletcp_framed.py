"""The framed programs of issue 12 on simpletcp.

  --program lines   answers every "\\n"-terminated line with itself (W5). By default as
                    a user wrote it before compiled framing: the read callback buffers
                    each connection's unfinished line itself. --framing compiled: the
                    loop frames (TCPServer(framing=Lines(...))), and the callback
                    returns each line as its answer.
  --program resp    examples/kvstore itself (redis-benchmark): its RespFramer, its
                    callback returning each reply
  --program http    examples/http itself (wrk), likewise

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
    keywords = {}
    if args.framing == "compiled":
        if args.program != "lines":
            parser.error("--framing compiled is for --program lines (resp and http are "
                         "the examples, framed by their own Framer)")
        callback = answer_line
        keywords = dict(framing=Lines(keep_delimiter=True, max_length=MAX_LINE_BYTES))
    elif args.program == "lines":
        callback = LineEcho()
    else:
        # The example itself: its framer, its callback returning each reply.
        app = load_example("kvstore").KeyValueServer() if args.program == "resp" else \
            load_example("http").HttpResponder()
        callback, keywords = app.on_request, app.keywords()
    server = TCPServer("localhost", args.port, callback, maximum_connections=args.backlog,
                       backend=args.backend, **keywords)
    print(server.port, flush=True)
    server.run()


if __name__ == "__main__":
    main()

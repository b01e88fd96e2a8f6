"""Echo server built on simpletcp: the callback from the README, nothing more.

Prints the bound port as the first line of stdout, then serves until killed.
"""
import argparse
import time

from simpletcp.tcpserver import TCPServer
from tls_context import add_tls_arguments, server_context


def echo(queue, data):
    queue.put(data)


def working_echo(seconds):
    """An echo whose callback first spends ``seconds`` of CPU, as an application's does
    (bench/workers.py: a server that is the bottleneck, not the load generator)."""
    def echo_after_work(queue, data):
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass
        queue.put(data)
    return echo_after_work


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--backlog", type=int, default=1024,
                        help="listen backlog (TCPServer's maximum_connections)")
    parser.add_argument("--recv-bytes", type=int, default=2048)
    parser.add_argument("--backend", choices=["epoll", "poll"], default="epoll")
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes (bench/workers.py compares 1 and 2)")
    parser.add_argument("--work-us", type=float, default=0,
                        help="CPU microseconds the callback spends per message first")
    add_tls_arguments(parser)
    args = parser.parse_args()

    callback = working_echo(args.work_us / 1e6) if args.work_us else echo
    server = TCPServer("localhost", args.port, callback, maximum_connections=args.backlog,
                       recv_bytes=args.recv_bytes, backend=args.backend, workers=args.workers,
                       ssl=server_context(args))
    print(server.port, flush=True)
    server.run()


if __name__ == "__main__":
    main()

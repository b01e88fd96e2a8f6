"""Echo server built on simpletcp: the callback from the README, nothing more.

Prints the bound port as the first line of stdout, then serves until killed.
"""
import argparse

from simpletcp.tcpserver import TCPServer


def echo(queue, data):
    queue.put(data)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--backlog", type=int, default=1024,
                        help="listen backlog (TCPServer's maximum_connections)")
    parser.add_argument("--recv-bytes", type=int, default=2048)
    parser.add_argument("--backend", choices=["epoll", "poll"], default="epoll")
    args = parser.parse_args()

    server = TCPServer("localhost", args.port, echo, maximum_connections=args.backlog,
                       recv_bytes=args.recv_bytes, backend=args.backend)
    print(server.port, flush=True)
    server.run()


if __name__ == "__main__":
    main()

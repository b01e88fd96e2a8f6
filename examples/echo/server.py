"""Echo server: sends every message back. Usage: python server.py [PORT]"""
import sys

from simpletcp.tcpserver import ConnectionQueue, TCPServer


def echo(queue: ConnectionQueue, data: bytes) -> None:
    queue.put(data)


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    server = TCPServer("localhost", port, echo)
    print(f"echo server listening on {server.ip}:{server.port}", flush=True)
    server.run()

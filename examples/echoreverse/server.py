"""Echo-reverse server: sends every message back reversed. Usage: python server.py [PORT]"""
import sys

from simpletcp.tcpserver import ConnectionQueue, TCPServer


def echo_reverse(ip: str, queue: ConnectionQueue, data: bytes) -> None:
    print(f"{ip} sent {data!r}", flush=True)
    queue.put(data[::-1])


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    server = TCPServer("localhost", port, echo_reverse)
    print(f"echo-reverse server listening on {server.ip}:{server.port}", flush=True)
    server.run()

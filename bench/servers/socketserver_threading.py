"""Echo server on the standard library's socketserver.ThreadingTCPServer: a thread per connection.

Prints the bound port as the first line of stdout, then serves until killed.
"""
import argparse
import socket
import socketserver
import threading

RECV_BYTES = 2048


class EchoHandler(socketserver.BaseRequestHandler):
    def setup(self):
        # As asyncio, uvloop, simpletcp and the C floor do: without it, Nagle's
        # algorithm meets delayed ACKs and bulk echoes stall for tens of ms.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle(self):
        sock = self.request
        try:
            while data := sock.recv(RECV_BYTES):
                sock.sendall(data)
        except ConnectionError:
            pass


class EchoServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    # 10,000 threads at the default 8 MiB stack reserve 80 GiB of address space;
    # only touched pages count in RSS, but a smaller reserve is kinder to the machine.
    thread_stack_bytes = 256 * 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--backlog", type=int, default=1024)
    args = parser.parse_args()

    threading.stack_size(EchoServer.thread_stack_bytes)
    EchoServer.request_queue_size = args.backlog  # the default of 5 drops SYNs under load
    with EchoServer(("127.0.0.1", args.port), EchoHandler) as server:
        print(server.server_address[1], flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main()

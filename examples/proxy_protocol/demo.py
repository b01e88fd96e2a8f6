"""What proxy_protocol=True does, without a load balancer: python demo.py

A server behind HAProxy, nginx or a cloud load balancer sees every connection come
from the balancer. With the PROXY protocol the balancer starts each connection with a
header naming the real client; the server reads it, and the callback's ip (and
queue.peer) are the client's. This script plays the balancer: it connects, sends a
header as HAProxy's send-proxy (v1) and send-proxy-v2 would, then the client's bytes.
"""
import ipaddress
import logging
import socket
import struct

from simpletcp.proxyprotocol import V2_SIGNATURE
from simpletcp.tcpserver import ConnectionQueue, TCPServer


def who_is_it(ip: str, queue: ConnectionQueue, data: bytes) -> None:
    queue.put(f"the callback got {data!r} from ip {ip}, peer {queue.peer}\n".encode())


def v2_header(client_ip: str, client_port: int, server_ip: str, server_port: int) -> bytes:
    addresses = (ipaddress.IPv4Address(client_ip).packed + ipaddress.IPv4Address(server_ip).packed
                 + struct.pack("!HH", client_port, server_port))
    # version 2, command PROXY; TCP over IPv4; the length of what follows.
    return V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", len(addresses)) + addresses


def as_the_balancer(port: int, header: bytes, payload: bytes) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as balancer:
        balancer.sendall(header + payload)
        return balancer.recv(1000).decode().strip()


if __name__ == "__main__":
    logging.basicConfig(format="server log: %(message)s")  # says why it closed the last one
    with TCPServer("localhost", 0, who_is_it, proxy_protocol=True).start() as server:
        print("v1:", as_the_balancer(
            server.port, b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 443\r\n", b"hello"))
        print("v2:", as_the_balancer(
            server.port, v2_header("198.51.100.23", 40000, "192.0.2.1", 443), b"hello"))
        # A client that skips the balancer (no header) is closed; the callback never runs.
        try:
            reply = as_the_balancer(server.port, b"", b"GET / HTTP/1.1\r\n\r\n")
        except ConnectionResetError:
            reply = ""
        print("without a header:", repr(reply) if reply else "closed by the server")

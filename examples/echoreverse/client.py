"""Echo-reverse client: one connection for several messages. Usage: python client.py [PORT]"""
import sys

from simpletcp.clientsocket import ClientSocket

if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    with ClientSocket("localhost", port, single_use=False) as client:
        for message in ("Hello, world!", "stressed", "racecar"):
            print(client.send(message).decode())

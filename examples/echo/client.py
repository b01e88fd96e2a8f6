"""Echo client: sends a few messages and prints the replies. Usage: python client.py [PORT]"""
import sys

from simpletcp.clientsocket import ClientSocket

if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    client = ClientSocket("localhost", port)
    for message in ("Hello, world!", "simpletcp", "bye"):
        reply = client.send(message)
        print(reply.decode())

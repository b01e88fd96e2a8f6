"""Counter client: four hits, each on a new connection. Usage: python client.py [PORT]"""
import sys

from simpletcp.clientsocket import ClientSocket

if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    client = ClientSocket("localhost", port)  # single use: a new connection per send
    for _ in range(4):
        print(client.send(b"hit").decode().strip())

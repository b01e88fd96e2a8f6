"""Echo server in the style of the original pure-Python simpleTCP package.

A select() loop over lists of input and output sockets; every connection has a
queue.Queue that the callback, callback(queue, data), fills; queued items are
sent when the socket is writable. Reads are 2048 bytes. The only liberty taken
is that a partial send() keeps its unsent tail instead of dropping it. Like the
original, it leaves TCP_NODELAY off (every other server here turns it on).

select() cannot watch descriptors >= 1024 (FD_SETSIZE): past roughly 1,020
connections this server fails, which is the point of having it here.

Prints the bound port as the first line of stdout, then serves until killed.
"""
import argparse
import queue
import select
import socket

RECV_BYTES = 2048


def echo(client_queue, data):
    client_queue.put(data)


def serve(port, backlog, callback):
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.setblocking(False)
    server.bind(("127.0.0.1", port))
    server.listen(backlog)
    print(server.getsockname()[1], flush=True)

    inputs = [server]
    outputs = []
    queues = {}
    unsent = {}  # socket -> tail of an item that send() did not take whole

    def drop(sock):
        if sock in outputs:
            outputs.remove(sock)
        inputs.remove(sock)
        queues.pop(sock, None)
        unsent.pop(sock, None)
        sock.close()

    while inputs:
        readable, writable, exceptional = select.select(inputs, outputs, inputs)
        for sock in readable:
            if sock is server:
                try:
                    connection, _ = server.accept()
                except BlockingIOError:
                    continue
                connection.setblocking(False)
                inputs.append(connection)
                queues[connection] = queue.Queue()
                continue
            try:
                data = sock.recv(RECV_BYTES)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if data:
                callback(queues[sock], data)
                if sock not in outputs:
                    outputs.append(sock)
            else:
                drop(sock)
        for sock in writable:
            if sock not in queues:
                continue  # dropped while handling the readable list
            data = unsent.pop(sock, None)
            if data is None:
                try:
                    data = queues[sock].get_nowait()
                except queue.Empty:
                    outputs.remove(sock)
                    continue
            try:
                sent = sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                drop(sock)
                continue
            if sent < len(data):
                unsent[sock] = data[sent:]
        for sock in exceptional:
            if sock in queues:
                drop(sock)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--backlog", type=int, default=1024)
    args = parser.parse_args()
    serve(args.port, args.backlog, echo)


if __name__ == "__main__":
    main()

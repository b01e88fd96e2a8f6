"""A line-based chat server, served by simpletcp.

Usage: python server.py [PORT]    (then, from two terminals: nc localhost PORT)

The server greets each client and asks for a nickname, its first line; then every line
a client sends goes to everyone else as ``<nick> line``. Arrivals and departures are
announced (``* alice joined``, ``* alice left``). Commands: ``/nick NEW`` renames,
``/who`` lists who is online, ``/quit`` leaves. Lines end with "\\n" ("\\r\\n" works
too); a line longer than MAX_LINE_BYTES closes its connection, so no client can make
the server buffer more.

What simpletcp does for it (README, "Writing a protocol"):

- ``framing=Lines(...)``: the server cuts each connection's bytes into lines, in
  compiled code; ``on_line`` is called once per line, however the bytes arrived;
- ``on_connect`` speaks first (what it returns is sent), ``on_disconnect`` announces
  the departure, whatever ended the connection;
- the nickname is per-connection state: an attribute of the connection's queue, which
  lives exactly as long as the connection;
- ``server.connections()`` reaches every member, from the server's thread.

Every callback and event runs in the server's one thread, so ``nicks`` needs no lock.
"""
import sys
from typing import Any, Dict, List, Optional, Set

from simpletcp.framing import Lines
from simpletcp.tcpserver import ConnectionQueue, TCPServer

MAX_LINE_BYTES = 4096
NICKNAME_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def valid_nickname(nick: str) -> bool:
    return 1 <= len(nick) <= 20 and set(nick) <= NICKNAME_CHARACTERS


class ChatServer:
    """The chat's callbacks. ``keywords()`` are what TCPServer needs to serve it;
    ``server`` must be set to that TCPServer before it serves."""

    def __init__(self) -> None:
        self.server: Optional[TCPServer] = None
        self.nicks: Set[str] = set()

    def keywords(self) -> Dict[str, Any]:
        return dict(framing=Lines(max_length=MAX_LINE_BYTES), on_connect=self.greet,
                    on_disconnect=self.leave)

    # ---- the connection's life

    def greet(self, queue: ConnectionQueue) -> bytes:
        queue.nick = None  # until it sends one
        return b"* hello: send your nickname\n"

    def on_line(self, queue: ConnectionQueue, line: bytes) -> Optional[bytes]:
        text = line.rstrip(b"\r").decode("utf-8", "replace")
        if queue.nick is None:
            return self.take_nickname(queue, text)
        if text == "/who":
            return f"* online: {', '.join(sorted(self.nicks))}\n".encode()
        if text == "/quit":
            queue.put(b"* bye\n")
            queue.shutdown()
        elif text.startswith("/nick "):
            return self.rename(queue, text[len("/nick "):].strip())
        elif text.startswith("/"):
            return f"* unknown command {text.split()[0]}: /nick NEW, /who, /quit\n".encode()
        elif text:
            self.tell_members(f"<{queue.nick}> {text}\n".encode(), besides=queue)
        return None

    def leave(self, queue: ConnectionQueue) -> None:
        if queue.nick is not None:  # a member, not someone who left before naming itself
            self.nicks.discard(queue.nick)
            self.tell_members(f"* {queue.nick} left\n".encode())

    # ---- nicknames

    def refusal(self, nick: str) -> Optional[bytes]:
        """Why `nick` cannot be had, or None if it is valid and free."""
        if not valid_nickname(nick):
            return b"* a nickname is 1-20 letters, digits, '_' or '-': send another\n"
        if nick in self.nicks:
            return f"* {nick} is taken: send another\n".encode()
        return None

    def take_nickname(self, queue: ConnectionQueue, nick: str) -> bytes:
        refusal = self.refusal(nick)
        if refusal is not None:
            return refusal
        others = sorted(self.nicks)
        self.nicks.add(nick)
        queue.nick = nick
        self.tell_members(f"* {nick} joined\n".encode(), besides=queue)
        return f"* welcome, {nick}; online: {', '.join(others) or 'nobody else'}\n".encode()

    def rename(self, queue: ConnectionQueue, nick: str) -> Optional[bytes]:
        if nick == queue.nick:
            return None
        refusal = self.refusal(nick)
        if refusal is not None:
            return refusal
        self.nicks.discard(queue.nick)
        self.nicks.add(nick)
        old, queue.nick = queue.nick, nick
        self.tell_members(f"* {old} is now {nick}\n".encode())
        return None

    # ---- reaching everyone

    def members(self) -> List[ConnectionQueue]:
        """The connections that joined (sent a nickname) and are not leaving."""
        assert self.server is not None, "set ChatServer.server before serving"
        return [queue for queue in self.server.connections()
                if queue.close_reason is None and getattr(queue, "nick", None) is not None]

    def tell_members(self, message: bytes, besides: Optional[ConnectionQueue] = None) -> None:
        """Put `message` to every member but `besides`. A member whose unsent output is
        past the server's high-water mark has stopped reading: it is disconnected rather
        than let the others' chatter pile up in the server's memory."""
        for queue in self.members():
            if queue is besides:
                continue
            if queue.full():
                queue.shutdown(immediate=True)  # its departure is announced by leave()
            else:
                queue.put(message)


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    chat = ChatServer()
    server = chat.server = TCPServer("localhost", port, chat.on_line, **chat.keywords())
    print(f"chat server listening on {server.ip}:{server.port}", flush=True)
    server.run()

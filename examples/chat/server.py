"""A line-based chat server, served by simpletcp.

Usage: python server.py [PORT]    (then, from two terminals: nc localhost PORT)

Each client sends its nickname as its first line, then chats: every line it sends goes to
everyone else as ``<nick> line``. Arrivals and departures are announced (``* alice
joined``, ``* alice left``). Commands: ``/nick NEW`` renames, ``/who`` lists who is
online, ``/quit`` leaves. Lines end with "\\n" ("\\r\\n" works too); a line longer than
MAX_LINE_BYTES closes its connection, so no client can make the server buffer more.

What simpletcp does not give yet (issue 12), this program builds by hand:

- per-connection state (the nickname, the unfinished line) lives in a WeakKeyDictionary
  keyed by the connection's queue, so it goes with the connection (a plain dict would
  keep every closed connection, and make stop() wait for them);
- a member that stops reading is disconnected before the others' lines pile up;
- a departure is noticed when the queue is freed (weakref.finalize), which happens in
  the loop's thread while it closes the connection; the announcement is handed to a
  thread of its own that puts it to the others, as any thread may.
"""
import queue as queue_module
import re
import sys
import threading
import weakref
from typing import List, Optional, Set, Tuple

from simpletcp.tcpserver import ConnectionQueue, ShutDown, TCPServer

MAX_LINE_BYTES = 4096
NICKNAME = re.compile(r"[A-Za-z0-9_-]{1,20}")


class Member:
    """One connection's state: its nickname (None until it sent one) and unfinished line."""

    __slots__ = ("nick", "unfinished")

    def __init__(self) -> None:
        self.nick: Optional[str] = None
        self.unfinished = b""


def deliver(queue: ConnectionQueue, message: bytes) -> None:
    """Put `message` to one member, never waiting. A member whose unsent output is past
    the server's high-water mark has stopped reading: it is disconnected rather than
    let the others' chatter pile up in the server's memory."""
    try:
        if queue.full():
            queue.shutdown(immediate=True)
        else:
            queue.put_nowait(message)
    except queue_module.Full:
        queue.shutdown(immediate=True)
    except ShutDown:
        pass  # it is leaving (/quit, a line too long); its departure will be announced


class ChatServer:
    """The read callback: splits each connection's bytes into lines and relays them."""

    def __init__(self) -> None:
        # queue -> Member, for every open connection. Weak keys: an entry goes with its
        # connection. The lock guards it and `nicks` against the departures thread.
        self.members: "weakref.WeakKeyDictionary[ConnectionQueue, Member]" = (
            weakref.WeakKeyDictionary())
        self.nicks: Set[str] = set()
        self.lock = threading.Lock()
        self.departures: "queue_module.SimpleQueue[Member]" = queue_module.SimpleQueue()
        threading.Thread(target=self.announce_departures, name="chat-departures",
                         daemon=True).start()

    # ---- the read callback (the loop's thread)

    def __call__(self, queue: ConnectionQueue, data: bytes) -> None:
        member = self.members.get(queue)
        if member is None:
            member = Member()
            with self.lock:
                self.members[queue] = member
            # Runs when the connection is gone and the loop lets go of its queue.
            weakref.finalize(queue, self.departures.put, member)
        lines = (member.unfinished + data).split(b"\n")
        member.unfinished = lines.pop()
        for line in lines:
            if len(line) > MAX_LINE_BYTES:
                break
            if not self.handle_line(queue, member, line.rstrip(b"\r").decode("utf-8", "replace")):
                return  # it quit: what else it sent is dropped
        else:
            if len(member.unfinished) <= MAX_LINE_BYTES:
                return
        queue.put(b"* line too long: at most %d bytes\n" % MAX_LINE_BYTES)
        queue.shutdown()

    def handle_line(self, queue: ConnectionQueue, member: Member, line: str) -> bool:
        """Act on one line; False once the client has quit."""
        if member.nick is None:
            self.take_nickname(queue, member, line)
        elif line == "/who":
            queue.put(f"* online: {', '.join(self.online())}\n".encode())
        elif line == "/quit":
            queue.put(b"* bye\n")
            queue.shutdown()
            return False
        elif line.startswith("/nick "):
            self.rename(queue, member, line[len("/nick "):].strip())
        elif line.startswith("/"):
            queue.put(f"* unknown command {line.split()[0]}: /nick NEW, /who, /quit\n".encode())
        elif line:
            self.broadcast(f"<{member.nick}> {line}\n".encode(), besides=queue)
        return True

    def online(self) -> List[str]:
        """The nicknames in use, sorted (the departures thread changes them too)."""
        with self.lock:
            return sorted(self.nicks)

    def claim(self, queue: ConnectionQueue, nick: str) -> bool:
        """Take `nick` if it is valid and free; else tell the client why not."""
        if not NICKNAME.fullmatch(nick):
            queue.put(b"* a nickname is 1-20 letters, digits, '_' or '-': send another\n")
            return False
        with self.lock:
            if nick in self.nicks:
                taken = True
            else:
                taken = False
                self.nicks.add(nick)
        if taken:
            queue.put(f"* {nick} is taken: send another\n".encode())
        return not taken

    def take_nickname(self, queue: ConnectionQueue, member: Member, nick: str) -> None:
        if not self.claim(queue, nick):
            return
        member.nick = nick
        others = [other for other in self.online() if other != nick]
        queue.put(f"* welcome, {nick}; online: {', '.join(others) or 'nobody else'}\n".encode())
        self.broadcast(f"* {nick} joined\n".encode(), besides=queue)

    def rename(self, queue: ConnectionQueue, member: Member, nick: str) -> None:
        old = member.nick
        if old is None or nick == old or not self.claim(queue, nick):
            return  # renaming is for members who joined (take_nickname gave them one)
        member.nick = nick
        with self.lock:
            self.nicks.discard(old)
        self.broadcast(f"* {old} is now {nick}\n".encode())

    # ---- reaching everyone (any thread)

    def broadcast(self, message: bytes, besides: Optional[ConnectionQueue] = None) -> None:
        """Put `message` to every named member but `besides`."""
        for queue, member in self.snapshot():
            if queue is not besides and member.nick is not None:
                deliver(queue, message)

    def snapshot(self) -> List[Tuple[ConnectionQueue, Member]]:
        with self.lock:
            while True:
                try:
                    return list(self.members.items())
                except RuntimeError:
                    # A connection's entry vanished under us: the weakref callback that
                    # removes it runs in the loop's thread, without our lock.
                    continue

    def announce_departures(self) -> None:
        while True:
            member = self.departures.get()
            if member.nick is None:
                continue  # left before naming itself: nobody knew it
            with self.lock:
                self.nicks.discard(member.nick)
            self.broadcast(f"* {member.nick} left\n".encode())


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    server = TCPServer("localhost", port, ChatServer())
    print(f"chat server listening on {server.ip}:{server.port}", flush=True)
    server.run()

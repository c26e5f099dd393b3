"""A small NATS client over a plain socket (the NATS text protocol: INFO, CONNECT, PUB, SUB, MSG,
PING/PONG), for catalog and notifier: Debian packages no NATS client for Python.

No tracing code here either: ztrace reads these bytes from the kernel like any NATS client's.
"""

import json
import socket
import threading
from urllib.parse import urlparse

# Idle this long, the client PINGs the server (NATS clients keep their connections checked).
PING_INTERVAL = 30


class Connection:
    """One connection to a NATS server (`nats://host:port`)."""

    def __init__(self, url, name):
        u = urlparse(url)
        self.sock = socket.create_connection((u.hostname or "127.0.0.1", u.port or 4222), timeout=10)
        self.buf = b""
        self.lock = threading.Lock()
        info = self._line()
        if not info.startswith(b"INFO "):
            raise ConnectionError(f"not a NATS server: {info[:40]!r}")
        options = {"verbose": False, "pedantic": False, "name": name, "lang": "python", "version": "0"}
        self._send(b"CONNECT " + json.dumps(options).encode() + b"\r\nPING\r\n")
        self._expect_pong()
        self.sock.settimeout(PING_INTERVAL)

    def _fill(self):
        while True:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                self._send(b"PING\r\n")
                continue
            if not data:
                raise ConnectionError("the NATS server closed the connection")
            self.buf += data
            return

    def _line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _read(self, n):
        while len(self.buf) < n:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def _send(self, data):
        with self.lock:
            self.sock.sendall(data)

    def _expect_pong(self):
        while True:
            line = self._line()
            if line == b"PONG":
                return
            if line == b"PING":
                self._send(b"PONG\r\n")
            elif line.startswith(b"-ERR"):
                raise ConnectionError(line.decode(errors="replace"))

    def publish(self, subject, payload):
        """`PUB subject size`: fire and forget, as NATS publishing is."""
        self._send(b"PUB %s %d\r\n%s\r\n" % (subject.encode(), len(payload), payload))

    def answer_pings(self):
        """For a connection that only publishes: a thread that reads what the server sends and
        answers its PINGs (a client that does not is disconnected)."""

        def run():
            try:
                while True:
                    if self._line() == b"PING":
                        self._send(b"PONG\r\n")
            except (ConnectionError, OSError):
                pass

        threading.Thread(target=run, daemon=True).start()

    def subscribe(self, subject, sid="1"):
        """`SUB subject sid`, confirmed by a PING/PONG round trip."""
        self._send(b"SUB %s %s\r\nPING\r\n" % (subject.encode(), sid.encode()))
        self._expect_pong()

    def messages(self):
        """The messages delivered to this connection's subscriptions, as (subject, payload), in
        the reading thread; PINGs are answered on the way."""
        while True:
            line = self._line()
            if line == b"PING":
                self._send(b"PONG\r\n")
                continue
            words = line.split()
            if len(words) < 4 or words[0] != b"MSG":
                continue  # PONG, +OK, -ERR
            size = int(words[-1])
            payload = self._read(size + 2)[:size]
            yield words[1].decode(), payload

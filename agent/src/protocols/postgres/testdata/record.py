#!/usr/bin/env python3
"""Records PostgreSQL sessions for the parser tests: `record.py LISTEN_PORT SERVER_PORT OUTDIR`.

A relaying proxy on 127.0.0.1:LISTEN_PORT to a server on 127.0.0.1:SERVER_PORT; each connection
is written to OUTDIR/conn-N.bin as one record per recv: `F` (client to server) or `B`, a
big-endian u32 length, the bytes. The .bin files beside this script were recorded with PostgreSQL
15.18, psql, pgbench, psycopg2 2.9.5 and pgx 4.15 (tests/fixtures/pgx_client) pointed at the proxy.
"""
import socket, sys, threading, struct, os
listen_port, target_port, outdir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
os.makedirs(outdir, exist_ok=True)
counter = [0]
lock = threading.Lock()
def handle(c, n):
    s = socket.create_connection(("127.0.0.1", target_port))
    f = open(f"{outdir}/conn-{n}.bin", "wb")
    flock = threading.Lock()
    def pump(src, dst, tag):
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                try: dst.shutdown(socket.SHUT_WR)
                except OSError: pass
                return
            with flock:
                f.write(tag + struct.pack(">I", len(data)) + data); f.flush()
            dst.sendall(data)
    t1 = threading.Thread(target=pump, args=(c, s, b"F")); t2 = threading.Thread(target=pump, args=(s, c, b"B"))
    t1.start(); t2.start(); t1.join(); t2.join(); f.close(); c.close(); s.close()
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); l.bind(("127.0.0.1", listen_port)); l.listen(16)
while True:
    c, _ = l.accept()
    with lock:
        counter[0] += 1; n = counter[0]
    threading.Thread(target=handle, args=(c, n), daemon=True).start()

"""What the three Python services share: a thread-per-request HTTP server and a psycopg2 pool.

No tracing code here, on purpose: ztrace sees every request and query from the kernel.
Configuration comes from the environment: PORT (the HTTP port), and the libpq variables
PGHOST, PGPORT, PGUSER for the database server (each service has its own database).
"""

import json
import os
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg2
import psycopg2.pool

_pool = None


def db(dbname):
    """The connection pool of this service's database (created on first use)."""
    global _pool
    if _pool is None:
        _pool = psycopg2.pool.ThreadedConnectionPool(1, 16, dbname=dbname)
    return _pool


def query(dbname, sql, args):
    """Runs one statement on a pooled connection (autocommit: no BEGIN/COMMIT round trips)."""
    pool = db(dbname)
    conn = pool.getconn()
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall()
    finally:
        pool.putconn(conn)


def serve(routes):
    """Serves GET requests: `routes` maps a regex on the path to a handler(match) -> (status, body)."""
    compiled = [(re.compile(p), h) for p, h in routes.items()]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            for pattern, handler in compiled:
                m = pattern.fullmatch(self.path)
                if m:
                    try:
                        status, body = handler(m)
                    except Exception as e:  # a failing dependency is a 502, not a dead thread
                        status, body = 502, {"error": str(e)}
                    break
            else:
                status, body = 404, {"error": "not found"}
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, fmt, *args):
            pass

    port = int(os.environ.get("PORT", "0"))
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    print(f"listening on {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    sys.exit(0)

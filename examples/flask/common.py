"""What the three Flask services share: a psycopg2 pool per worker process.

The same system as `examples/python` (orders -> users, inventory, each with its PostgreSQL
database), written the way such services are usually deployed: Flask apps under gunicorn.
`cargo xtask bench --sdk` runs it untraced, under OpenTelemetry's zero-code Python
instrumentation (`opentelemetry-instrument gunicorn ...`) and under ztrace. No tracing code
here. Environment: PG* (libpq), and for orders USERS_URL and INVENTORY_URL.
"""

import threading

import psycopg2.pool

_pool = None
_pool_lock = threading.Lock()


def query(dbname, sql, args):
    """Runs one statement on a pooled connection (autocommit: no BEGIN/COMMIT round trips).
    The pool is made on first use, in the worker process (gunicorn forks after importing)."""
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                _pool = psycopg2.pool.ThreadedConnectionPool(1, 8, dbname=dbname)
    conn = _pool.getconn()
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall()
    finally:
        _pool.putconn(conn)

"""catalog: GET /items/{id}[?user={id}] reads an item through a Redis cache: on a miss, from
PostgreSQL (the inventory database's `stock`), then caches it for 60 s; then publishes an
`items.viewed` event to NATS (notifier consumes it). Environment: PORT, PG*, REDIS_URL
(`redis://127.0.0.1:6379/0`), NATS_URL (`nats://127.0.0.1:4222`).

Debian's redis-py (`python3-redis`) for Redis, the small socket client of natsproto.py for NATS."""

import json
import os
import re
import threading
import time

import redis

from common import query, serve
from natsproto import Connection

cache = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
NATS = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
_nats = None
_nats_lock = threading.Lock()


def nats():
    """The NATS connection, opened on first use."""
    global _nats
    with _nats_lock:
        if _nats is None:
            _nats = Connection(NATS, "catalog")
            _nats.answer_pings()
        return _nats


def item(m):
    item_id = int(m[1])
    user = int(m[2] or 1)
    key = f"item:{item_id}"
    cached = cache.get(key)
    if cached is None:
        rows = query("inventory", "SELECT item_id, on_hand FROM stock WHERE item_id = %s", (item_id,))
        if not rows:
            return 404, {"error": "no such item"}
        body = {"item": item_id, "on_hand": rows[0][1]}
        cache.set(key, json.dumps(body), ex=60)
    else:
        body = json.loads(cached)
    event = {"item": item_id, "user": user, "at": time.time_ns()}
    nats().publish("items.viewed", json.dumps(event).encode())
    return 200, dict(body, cached=cached is not None)


serve({r"/items/(\d+)(?:\?user=(\d+))?": item})

"""orders: GET /orders/{id} reads the order, then the buyer's profile from users and the
item's stock from inventory. Environment: PORT, PG*, USERS_URL, INVENTORY_URL."""

import json
import os
import urllib.request

from common import query, serve

USERS = os.environ.get("USERS_URL", "http://127.0.0.1:8082")
INVENTORY = os.environ.get("INVENTORY_URL", "http://127.0.0.1:8083")


def get_json(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


def order(m):
    rows = query("orders", "SELECT id, user_id, item_id, quantity FROM orders WHERE id = %s", (int(m[1]),))
    if not rows:
        return 404, {"error": "no such order"}
    oid, user_id, item_id, quantity = rows[0]
    user = get_json(f"{USERS}/profiles/{user_id}")
    stock = get_json(f"{INVENTORY}/stock/{item_id}")
    return 200, {"id": oid, "quantity": quantity, "user": user, "stock": stock}


serve({r"/orders/(\d+)": order})

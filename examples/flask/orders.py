"""orders: GET /orders/<id> reads the order, then the buyer's profile from users and the
item's stock from inventory (`gunicorn orders:app`)."""

import json
import os
import urllib.request

from flask import Flask, jsonify

from common import query

USERS = os.environ.get("USERS_URL", "http://127.0.0.1:8082")
INVENTORY = os.environ.get("INVENTORY_URL", "http://127.0.0.1:8083")

app = Flask("orders")


def get_json(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


@app.get("/orders/<int:oid>")
def order(oid):
    rows = query("orders", "SELECT id, user_id, item_id, quantity FROM orders WHERE id = %s", (oid,))
    if not rows:
        return jsonify(error="no such order"), 404
    oid, user_id, item_id, quantity = rows[0]
    user = get_json(f"{USERS}/profiles/{user_id}")
    stock = get_json(f"{INVENTORY}/stock/{item_id}")
    return jsonify(id=oid, quantity=quantity, user=user, stock=stock)

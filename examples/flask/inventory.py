"""inventory: GET /stock/<id> reads an item's stock, then its reservations
(`gunicorn inventory:app`)."""

from flask import Flask, jsonify

from common import query

app = Flask("inventory")


@app.get("/stock/<int:item>")
def stock(item):
    rows = query("inventory", "SELECT item_id, on_hand FROM stock WHERE item_id = %s", (item,))
    if not rows:
        return jsonify(error="no such item"), 404
    reserved = query("inventory", "SELECT count(*) FROM reservations WHERE item_id = %s", (item,))
    return jsonify(item=item, on_hand=rows[0][1], reserved=reserved[0][0])

"""inventory: GET /stock/{id} reads the stock of an item, then its reservations.
Environment: PORT, PG*."""

from common import query, serve


def stock(m):
    item = int(m[1])
    rows = query("inventory", "SELECT item_id, on_hand FROM stock WHERE item_id = %s", (item,))
    if not rows:
        return 404, {"error": "no such item"}
    reserved = query("inventory", "SELECT count(*) FROM reservations WHERE item_id = %s", (item,))
    return 200, {"item": item, "on_hand": rows[0][1], "reserved": reserved[0][0]}


serve({r"/stock/(\d+)": stock})

"""users: GET /profiles/<id> reads one user (`gunicorn users:app`)."""

from flask import Flask, jsonify

from common import query

app = Flask("users")


@app.get("/profiles/<int:uid>")
def profile(uid):
    rows = query("users", "SELECT id, name, email FROM users WHERE id = %s", (uid,))
    if not rows:
        return jsonify(error="no such user"), 404
    uid, name, email = rows[0]
    return jsonify(id=uid, name=name, email=email)

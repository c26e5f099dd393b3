"""users: GET /profiles/{id} reads one user. Environment: PORT, PG*."""

from common import query, serve


def profile(m):
    rows = query("users", "SELECT id, name, email FROM users WHERE id = %s", (int(m[1]),))
    if not rows:
        return 404, {"error": "no such user"}
    uid, name, email = rows[0]
    return 200, {"id": uid, "name": name, "email": email}


serve({r"/profiles/(\d+)": profile})

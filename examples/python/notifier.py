"""notifier: subscribes to NATS `items.viewed` and, for each event, reads the viewer's profile
from users (`GET /profiles/{user}`), as a service that would then mail them would. One thread:
the message is read, then handled. Environment: NATS_URL (`nats://127.0.0.1:4222`), USERS_URL
(`http://127.0.0.1:8082`)."""

import json
import os
import urllib.request

from natsproto import Connection

USERS = os.environ.get("USERS_URL", "http://127.0.0.1:8082")

conn = Connection(os.environ.get("NATS_URL", "nats://127.0.0.1:4222"), "notifier")
conn.subscribe("items.viewed")
print("subscribed to items.viewed", flush=True)
for subject, payload in conn.messages():
    try:
        event = json.loads(payload)
        with urllib.request.urlopen(f"{USERS}/profiles/{event['user']}", timeout=10) as r:
            profile = json.load(r)
        print(f"item {event['item']} viewed by {profile['email']}", flush=True)
    except Exception as e:  # a bad event or a failing users service does not stop the loop
        print(f"could not handle {payload[:80]!r}: {e}", flush=True)

"""Subscribes to one channel with centrifuge-python and prints one JSON line
per publication and per subscribed event; after `want` publications it tries
publish and history (kpush answers "not available"), prints their error
codes and exits. Usage: python cf_client.py <url> <channel> <want>"""
import asyncio
import json
import sys

from centrifuge import Client, ReplyError, SubscriptionEventHandler


def out(o):
    sys.stdout.write(json.dumps(o) + "\n")
    sys.stdout.flush()


async def main(url, channel, want):
    done = asyncio.Event()
    count = 0

    class Events(SubscriptionEventHandler):
        async def on_subscribed(self, ctx):
            out({"event": "subscribed", "recovered": ctx.recovered, "wasRecovering": ctx.was_recovering})

        async def on_publication(self, ctx):
            nonlocal count
            out({"event": "publication", "offset": ctx.pub.offset, "data": ctx.pub.data})
            count += 1
            if count == want:
                done.set()

    client = Client(url, min_reconnect_delay=0.05, max_reconnect_delay=0.2)
    sub = client.new_subscription(channel, events=Events())
    await client.connect()
    await sub.subscribe()
    await asyncio.wait_for(done.wait(), 30)
    for name, call in (("publish", lambda: client.publish(channel, {"x": 1})), ("history", lambda: client.history(channel))):
        try:
            await call()
            out({"event": name, "code": 0})
        except ReplyError as e:
            out({"event": name, "code": e.code})
    out({"event": "state", "state": client.state.value})
    await client.disconnect()


asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))

"""Subscribes to one channel with centrifuge-python and prints one JSON line
per publication and per subscribed event; after `want` publications it tries
publish and history (kpush answers "not available"), prints their error
codes and exits. With "protobuf" as the fourth argument it uses the
Protobuf format (publication data then arrives as bytes).
Usage: python cf_client.py <url> <channel> <want> [protobuf]"""
import asyncio
import json
import sys

from centrifuge import Client, ReplyError, SubscriptionEventHandler


def out(o):
    sys.stdout.write(json.dumps(o) + "\n")
    sys.stdout.flush()


async def main(url, channel, want, proto):
    done = asyncio.Event()
    count = 0

    class Events(SubscriptionEventHandler):
        async def on_subscribed(self, ctx):
            out({"event": "subscribed", "recovered": ctx.recovered, "wasRecovering": ctx.was_recovering})

        async def on_publication(self, ctx):
            nonlocal count
            data = json.loads(ctx.pub.data) if proto else ctx.pub.data
            out({"event": "publication", "offset": ctx.pub.offset, "data": data})
            count += 1
            if count == want:
                done.set()

    client = Client(url, min_reconnect_delay=0.05, max_reconnect_delay=0.2, use_protobuf=proto)
    sub = client.new_subscription(channel, events=Events())
    await client.connect()
    await sub.subscribe()
    await asyncio.wait_for(done.wait(), 30)
    for name, call in (("publish", lambda: client.publish(channel, b'{"x":1}' if proto else {"x": 1})), ("history", lambda: client.history(channel))):
        try:
            await call()
            out({"event": name, "code": 0})
        except ReplyError as e:
            out({"event": name, "code": e.code})
    out({"event": "state", "state": client.state.value})
    await client.disconnect()


asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), len(sys.argv) > 4 and sys.argv[4] == "protobuf"))

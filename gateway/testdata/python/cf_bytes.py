"""Subscribes to one channel with centrifuge-python in the Protobuf format
and prints one JSON line per publication: its offset and its data's bytes in
hex; exits after `want` publications.
Usage: python cf_bytes.py <url> <channel> <want>"""
import asyncio
import json
import sys

from centrifuge import Client, SubscriptionEventHandler


async def main(url, channel, want):
    done = asyncio.Event()
    count = 0

    class Events(SubscriptionEventHandler):
        async def on_publication(self, ctx):
            nonlocal count
            sys.stdout.write(json.dumps({"offset": ctx.pub.offset, "hex": bytes(ctx.pub.data).hex()}) + "\n")
            sys.stdout.flush()
            count += 1
            if count == want:
                done.set()

    client = Client(url, use_protobuf=True)
    sub = client.new_subscription(channel, events=Events())
    await client.connect()
    await sub.subscribe()
    await asyncio.wait_for(done.wait(), 30)
    await client.disconnect()


asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))

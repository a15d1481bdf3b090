// Subscribes to one channel with the centrifuge SDK (centrifuge-js) and
// prints one JSON line per publication and per subscribed event; after
// `want` publications it tries publish and history (kpush answers "not
// available"), prints their error codes and exits.
// With "protobuf" as the fourth argument it uses the package's Protobuf
// build in the Protobuf format (publication data then arrives as bytes).
// Usage: node cf_client.mjs <url> <channel> <want> [protobuf]
import WebSocket from 'ws';

const [url, channel, want, format] = process.argv.slice(2);
const proto = format === 'protobuf';
const { Centrifuge } = await import(proto ? 'centrifuge/build/protobuf' : 'centrifuge');
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const opts = { websocket: WebSocket, minReconnectDelay: 50, maxReconnectDelay: 200 };
if (proto) opts.protocol = 'protobuf';
const c = new Centrifuge(url, opts);
const sub = c.newSubscription(channel);
let n = 0;
sub.on('subscribed', (ctx) => out({ event: 'subscribed', recovered: ctx.recovered, wasRecovering: ctx.wasRecovering }));
sub.on('publication', async (ctx) => {
  const data = proto ? JSON.parse(new TextDecoder().decode(ctx.data)) : ctx.data;
  out({ event: 'publication', offset: Number(ctx.offset), data });
  if (++n === Number(want)) {
    for (const [name, call] of [['publish', () => c.publish(channel, { x: 1 })], ['history', () => sub.history({ limit: 1 })]]) {
      try {
        await call();
        out({ event: name, code: 0 });
      } catch (e) {
        out({ event: name, code: e.code });
      }
    }
    out({ event: 'state', state: c.state });
    c.disconnect();
    process.exit(0);
  }
});
sub.subscribe();
c.connect();
setTimeout(() => { out({ event: 'timeout' }); process.exit(2); }, 30000);

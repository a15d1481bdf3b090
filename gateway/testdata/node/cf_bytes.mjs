// Subscribes to one channel with the centrifuge package's Protobuf build
// and prints one JSON line per publication: its offset and its data's bytes
// in hex; exits after `want` publications.
// Usage: node cf_bytes.mjs <url> <channel> <want>
import WebSocket from 'ws';
import { Centrifuge } from 'centrifuge/build/protobuf';

const [url, channel, want] = process.argv.slice(2);
const c = new Centrifuge(url, { websocket: WebSocket, protocol: 'protobuf' });
const sub = c.newSubscription(channel);
let n = 0;
sub.on('publication', (ctx) => {
  process.stdout.write(JSON.stringify({ offset: Number(ctx.offset), hex: Buffer.from(ctx.data).toString('hex') }) + '\n');
  if (++n === Number(want)) {
    c.disconnect();
    process.exit(0);
  }
});
sub.subscribe();
c.connect();
setTimeout(() => { process.stdout.write('{"timeout":true}\n'); process.exit(2); }, 30000);

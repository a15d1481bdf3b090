// Reads an event stream with the eventsource package (the WHATWG
// EventSource for Node) and prints one JSON line per event of the given
// channels, and per kpush-* event; it exits after `want` records.
// Usage: node sse_client.mjs <url> <want> <channel>...
import { EventSource } from 'eventsource';

const [url, want, ...channels] = process.argv.slice(2);
let records = 0;
const es = new EventSource(url);
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
es.addEventListener('open', () => out({ event: 'open' }));
for (const ch of channels) {
  es.addEventListener(ch, (e) => {
    out({ event: ch, id: e.lastEventId, data: e.data });
    if (++records >= Number(want)) {
      es.close();
      process.exit(0);
    }
  });
}
for (const name of ['kpush-resume', 'kpush-error', 'kpush-close']) {
  es.addEventListener(name, (e) => out({ event: name, data: e.data }));
}
setTimeout(() => { out({ event: 'timeout' }); process.exit(2); }, 30000);

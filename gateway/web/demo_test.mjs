// Tests for demo.js with node's built-in runner only:
//   node --test gateway/web/demo_test.mjs
// The page runs in a vm context with a small DOM stand-in and a fake
// WebSocket server, the way the browser would run kpush.js then demo.js.
import { afterEach, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import vm from 'node:vm';

const here = new URL('.', import.meta.url);
const kpushSrc = readFileSync(new URL('kpush.js', here), 'utf8');
const demoSrc = readFileSync(new URL('demo.js', here), 'utf8');
const SYMBOLS = ['AAPL', 'MSFT', 'GOOG', 'AMZN', 'TSLA', 'NVDA', 'META', 'NFLX', 'AMD', 'INTC'];

class Element {
  constructor(tag) {
    this.tag = tag;
    this.children = [];
    this.className = '';
    this.textContent = '';
    this.dataset = {};
    this.listeners = {};
    this.offsetWidth = 0;
    const el = this;
    this.classList = {
      add: (...c) => { el.className = [...new Set([...el.className.split(' ').filter(Boolean), ...c])].join(' '); },
      remove: (...c) => { el.className = el.className.split(' ').filter((x) => x && !c.includes(x)).join(' '); },
      toggle: (c, on) => (on ? el.classList.add(c) : el.classList.remove(c)),
      contains: (c) => el.className.split(' ').includes(c),
    };
  }
  appendChild(c) { this.children.push(c); return c; }
  insertBefore(c, ref) {
    const i = ref ? this.children.indexOf(ref) : -1;
    if (i < 0) this.children.push(c); else this.children.splice(i, 0, c);
    return c;
  }
  removeChild(c) { this.children.splice(this.children.indexOf(c), 1); return c; }
  addEventListener(ev, fn) { (this.listeners[ev] ||= []).push(fn); }
  getAttribute(name) { return this.attrs?.[name] ?? null; }
}

function fakeSocketClass() {
  class FakeWS {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      FakeWS.instances.push(this);
    }
    send(s) { this.sent.push(JSON.parse(s)); }
    close() { this.readyState = 3; }
    accept() { this.readyState = 1; this.onopen?.({}); }
    push(f) { this.onmessage?.({ data: JSON.stringify(f) }); }
    drop(code = 1006) { this.readyState = 3; this.onclose?.({ code, reason: '' }); }
  }
  FakeWS.instances = [];
  return FakeWS;
}

// Every page's client is closed after its test so no timer outlives it.
const pages = [];
afterEach(() => { while (pages.length) pages.pop().close(); });

// loadPage runs kpush.js and demo.js as the page would and returns handles.
function loadPage({ search = '', wsPath = '/ws' } = {}) {
  const byId = {};
  for (const id of ['rows', 'status', 'log', 'picker', 'stat-received', 'stat-rate', 'stat-gaps',
    'stat-recoveries', 'stat-failed', 'stat-reconnects', 'stat-duplicates']) byId[id] = new Element('x');
  const inputs = SYMBOLS.map((s, i) => Object.assign(new Element('input'), { name: 'symbol', value: s, checked: i < 5 }));
  const meta = Object.assign(new Element('meta'), { attrs: { content: wsPath } });
  const frames = [];
  const WS = fakeSocketClass();
  const ctx = {
    document: {
      getElementById: (id) => byId[id] ?? null,
      querySelectorAll: (sel) => (sel === 'input[name="symbol"]' ? inputs : []),
      querySelector: (sel) => (sel === 'meta[name="kpush-ws-path"]' ? meta : null),
      createElement: (tag) => new Element(tag),
    },
    location: { search, protocol: 'https:', host: 'demo.test:8443', hostname: 'demo.test' },
    URLSearchParams,
    WebSocket: WS,
    requestAnimationFrame: (fn) => frames.push(fn),
    setInterval: () => 0,
    setTimeout,
    clearTimeout,
    console,
  };
  ctx.window = ctx;
  vm.createContext(ctx);
  vm.runInContext(kpushSrc, ctx, { filename: 'kpush.js' });
  vm.runInContext(demoSrc, ctx, { filename: 'demo.js' });
  pages.push(ctx.kpushDemo.client);
  const render = () => { while (frames.length) frames.shift()(); };
  const rows = () => byId.rows.children.map((tr) => tr.dataset.symbol);
  const toggle = (sym, on) => {
    const input = inputs.find((i) => i.value === sym);
    input.checked = on;
    for (const fn of byId.picker.listeners.change) fn({ target: input });
  };
  return { ctx, demo: ctx.kpushDemo, WS, byId, render, rows, toggle };
}

const flush = () => new Promise((resolve) => setImmediate(resolve));

async function waitFor(cond, what) {
  const deadline = Date.now() + 5000;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error('timed out waiting for ' + what);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

let offset = 0;
function tick(sym, seq, extra = {}) {
  const price = 100 + seq / 100;
  return {
    op: 'msg', ch: 'ticks.' + sym, p: 1, o: ++offset, ts: 1764000000000 + seq,
    data: { sym, price, bid: price - 0.01, ask: price + 0.01, size: 100, seq, ts: 1764000000000 + seq },
    ...extra,
  };
}

// okAll answers every subscribe the socket has sent and not yet been answered.
function okAll(ws, recovered) {
  for (const f of ws.sent.filter((f) => f.op === 'subscribe' && !f.answered)) {
    f.answered = true;
    const ok = { op: 'ok', id: f.id };
    if (f.since) ok.recovered = Object.fromEntries(f.channels.map((c) => [c, recovered(c)]));
    ws.push(ok);
  }
}

test('connects to the injected path and subscribes the checked symbols with snapshots', async () => {
  const { demo, WS, rows, byId } = loadPage({ wsPath: '/push/ws' });
  await flush();
  assert.equal(WS.instances[0].url, 'wss://demo.test:8443/push/ws');
  assert.deepEqual(rows(), ['AAPL', 'MSFT', 'GOOG', 'AMZN', 'TSLA']);
  WS.instances[0].accept();
  assert.equal(demo.state, 'open');
  assert.equal(byId.status.className, 'status status-open');
  assert.deepEqual(WS.instances[0].sent.map((f) => [f.channels.join(), f.snapshot]), [
    ['ticks.AAPL', true], ['ticks.MSFT', true], ['ticks.GOOG', true], ['ticks.AMZN', true], ['ticks.TSLA', true],
  ]);
});

test('other-port and absolute WebSocket locations', async () => {
  let p = loadPage({ wsPath: ':9000/ws' });
  await flush();
  assert.equal(p.WS.instances[0].url, 'wss://demo.test:9000/ws');
  p = loadPage({ wsPath: 'ws://elsewhere.test/ws' });
  await flush();
  assert.equal(p.WS.instances[0].url, 'ws://elsewhere.test/ws');
});

test('?symbols= and ?token= pick the symbols and the token', async () => {
  const { WS, rows } = loadPage({ search: '?symbols=nvda,AMD&token=s3cret' });
  await flush();
  assert.deepEqual(rows(), ['NVDA', 'AMD']);
  assert.equal(WS.instances[0].url, 'wss://demo.test:8443/ws?token=s3cret');
});

test('ticks update prices and counters; seq jumps count as gaps unless conflated', async () => {
  const { demo, WS, render, byId } = loadPage();
  await flush();
  const ws = WS.instances[0];
  ws.accept();
  okAll(ws);
  ws.push(tick('AAPL', 1, { snap: true }));
  ws.push(tick('AAPL', 2));
  ws.push(tick('MSFT', 7));
  render();
  assert.equal(demo.received, 3);
  assert.equal(demo.gaps, 0);
  assert.equal(demo.lastPrices.AAPL, 100.02);
  const aapl = byId.rows.children[0];
  assert.equal(aapl.children[1].textContent, '100.02');
  assert.ok(aapl.children[1].classList.contains('flash-up'));
  assert.equal(aapl.children[7].textContent, `1 / ${offset - 1}`);
  ws.push(tick('AAPL', 5, { skipped: 2 })); // conflation dropped 3 and 4
  assert.equal(demo.gaps, 0);
  ws.push(tick('AAPL', 7)); // 6 is missing
  assert.equal(demo.gaps, 1);
  render();
  assert.equal(byId['stat-gaps'].className, 'bad');
});

test('a resumed channel: gaps count only when the server claims full recovery', async () => {
  const { demo, WS } = loadPage({ search: '?symbols=AAPL,MSFT,GOOG' });
  await flush();
  const ws = WS.instances[0];
  ws.accept();
  okAll(ws);
  ws.push(tick('AAPL', 10));
  ws.push(tick('MSFT', 20));
  ws.push(tick('GOOG', 30));
  ws.drop(1006);
  await waitFor(() => WS.instances.length === 2, 'the reconnect');
  const ws2 = WS.instances[1];
  ws2.accept();
  assert.deepEqual(ws2.sent.map((f) => Object.keys(f.since || {})), [['ticks.AAPL'], ['ticks.MSFT'], ['ticks.GOOG']]);
  // AAPL replays contiguously; MSFT lost records and says so; GOOG claims
  // recovery but skips one: only GOOG is a gap.
  ws2.push(tick('AAPL', 11));
  ws2.push(tick('MSFT', 25));
  ws2.push(tick('GOOG', 32));
  okAll(ws2, (ch) => ch !== 'ticks.MSFT');
  ws2.push(tick('MSFT', 26));
  assert.equal(demo.recoveries, 2);
  assert.equal(demo.failedRecoveries, 1);
  assert.equal(demo.gaps, 1);
  assert.equal(demo.client.stats().reconnects, 1);
});

test('unchecking a symbol unsubscribes it and removes its row', async () => {
  const { demo, WS, rows, toggle } = loadPage();
  await flush();
  const ws = WS.instances[0];
  ws.accept();
  okAll(ws);
  ws.push(tick('MSFT', 1));
  toggle('MSFT', false);
  assert.deepEqual(ws.sent.at(-1).channels, ['ticks.MSFT']);
  assert.equal(ws.sent.at(-1).op, 'unsubscribe');
  assert.deepEqual(rows(), ['AAPL', 'GOOG', 'AMZN', 'TSLA']);
  assert.equal(demo.lastPrices.MSFT, undefined);
  toggle('NVDA', true);
  assert.deepEqual(rows(), ['AAPL', 'GOOG', 'AMZN', 'TSLA', 'NVDA']);
  assert.deepEqual(ws.sent.at(-1), { op: 'subscribe', id: ws.sent.at(-1).id, channels: ['ticks.NVDA'], snapshot: true });
  toggle('AAPL', false);
  toggle('AAPL', true);
  assert.deepEqual(rows()[0], 'AAPL', 'rows stay in picker order');
});

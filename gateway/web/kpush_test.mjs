// Tests for kpush.js with node's built-in runner only:
//   node --test gateway/web/kpush_test.mjs
// A fake WebSocket plays the server; a fake clock drives backoff and timeouts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const KPush = require('./kpush.js');

// fakeSocketClass returns a WebSocket stand-in that records every instance.
function fakeSocketClass() {
  class FakeWS {
    constructor(url, protocols) {
      this.url = url;
      this.protocols = protocols;
      this.readyState = 0;
      this.sent = [];
      this.closedWith = null;
      FakeWS.instances.push(this);
    }
    send(s) {
      if (this.readyState !== 1) throw new Error('send on a socket that is not open');
      this.sent.push(JSON.parse(s));
    }
    close(code, reason) {
      this.closedWith = { code, reason };
      this.readyState = 2;
    }
    // Server side.
    accept() {
      this.readyState = 1;
      if (this.onopen) this.onopen({});
    }
    push(frame) {
      if (this.onmessage) this.onmessage({ data: typeof frame === 'string' ? frame : JSON.stringify(frame) });
    }
    drop(code = 1006, reason = '') {
      this.readyState = 3;
      if (this.onclose) this.onclose({ code, reason });
    }
    last() {
      return this.sent[this.sent.length - 1];
    }
  }
  FakeWS.instances = [];
  return FakeWS;
}

// fakeClock runs timers only when told to.
function fakeClock() {
  let now = 0;
  let seq = 0;
  const timers = new Map();
  const clock = {
    delays: [],
    setTimeout(fn, ms) {
      const id = ++seq;
      timers.set(id, { fn, at: now + ms });
      clock.delays.push(ms);
      return id;
    },
    clearTimeout(id) {
      timers.delete(id);
    },
    advance(ms) {
      const end = now + ms;
      for (;;) {
        let next = null;
        for (const [id, t] of timers) {
          if (t.at <= end && (next === null || t.at < timers.get(next).at)) next = id;
        }
        if (next === null) break;
        const t = timers.get(next);
        timers.delete(next);
        now = t.at;
        t.fn();
      }
      now = end;
    },
    count() {
      return timers.size;
    },
  };
  return clock;
}

const flush = () => new Promise((resolve) => setImmediate(resolve));

// setup builds a client against a fake socket and clock, connected and open.
async function setup(opts = {}) {
  const WS = fakeSocketClass();
  const clock = fakeClock();
  const events = { message: [], recovered: [], state: [], error: [] };
  const c = new KPush('ws://kpush.test/ws', {
    WebSocket: WS,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    random: () => 1,
    pingInterval: 0,
    ...opts,
  });
  for (const ev of Object.keys(events)) c.on(ev, (x) => events[ev].push(x));
  await flush();
  assert.equal(WS.instances.length, 1, 'client connects on construction');
  const ws = WS.instances[0];
  ws.accept();
  return { c, WS, ws, clock, events };
}

function msg(ch, p, o, data = {}) {
  return { op: 'msg', ch, p, o, ts: 1764000000000 + o, data };
}

test('subscribe sends a snapshot request and resolves with the ok frame', async () => {
  const { c, ws, events } = await setup();
  assert.deepEqual(events.state, ['connecting', 'open']);
  const p = c.subscribe(['ticks.AAPL', 'ticks.MSFT']);
  assert.deepEqual(ws.last(), { op: 'subscribe', id: 1, channels: ['ticks.AAPL', 'ticks.MSFT'], snapshot: true });
  ws.push({ op: 'ok', id: 1 });
  assert.deepEqual(await p, { op: 'ok', id: 1 });
});

test('snapshot: false leaves the flag out', async () => {
  const { c, ws } = await setup({ snapshot: false });
  c.subscribe('ticks.AAPL');
  assert.deepEqual(ws.last(), { op: 'subscribe', id: 1, channels: ['ticks.AAPL'] });
});

test('invalid channel names are refused locally', async () => {
  const { c, ws } = await setup();
  await assert.rejects(c.subscribe(['ok', 'bad channel']), TypeError);
  await assert.rejects(c.subscribe([]), TypeError);
  await assert.rejects(c.subscribe(['x'.repeat(201)]), TypeError);
  assert.equal(ws.sent.length, 0);
  assert.deepEqual(c.channels(), []);
});

test('replies are matched to requests by id, in any order', async () => {
  const { c, ws, events } = await setup();
  const a = c.ping();
  const b = c.subscribe('ticks.AAPL');
  const d = c.ping();
  assert.deepEqual(ws.sent.map((f) => f.id), [1, 2, 3]);
  ws.push({ op: 'pong', id: 3 });
  ws.push({ op: 'error', id: 2, code: 'forbidden', message: 'no' });
  ws.push({ op: 'pong', id: 1 });
  assert.deepEqual(await a, { op: 'pong', id: 1 });
  assert.deepEqual(await d, { op: 'pong', id: 3 });
  await assert.rejects(b, (err) => err.code === 'forbidden' && err.frame.id === 2);
  assert.equal(events.error.length, 1);
  assert.deepEqual(c.channels(), [], 'a refused channel is not kept for resubscription');
});

test('a request without a reply times out', async () => {
  const { c, clock } = await setup({ requestTimeout: 1000 });
  const p = c.ping();
  clock.advance(999);
  clock.advance(1);
  await assert.rejects(p, /no reply to ping 1 within 1000ms/);
});

test('duplicates and stale offsets are dropped per channel and partition', async () => {
  const { c, ws, events } = await setup();
  c.subscribe(['ticks.AAPL', 'ticks.MSFT']);
  ws.push({ op: 'ok', id: 1 });
  ws.push({ ...msg('ticks.AAPL', 2, 100), snap: true });
  ws.push(msg('ticks.AAPL', 2, 101));
  ws.push(msg('ticks.AAPL', 2, 101)); // repeat
  ws.push(msg('ticks.AAPL', 2, 99)); // older
  ws.push(msg('ticks.AAPL', 0, 5)); // other partition, lower offset: fine
  ws.push(msg('ticks.MSFT', 2, 50)); // other channel, same partition
  ws.push(msg('ticks.AAPL', 2, 102));
  ws.push(msg('ticks.NOPE', 2, 1)); // never subscribed
  assert.deepEqual(events.message.map((m) => `${m.ch}/${m.p}/${m.o}`), [
    'ticks.AAPL/2/100', 'ticks.AAPL/2/101', 'ticks.AAPL/0/5', 'ticks.MSFT/2/50', 'ticks.AAPL/2/102',
  ]);
  assert.equal(events.message[0].snap, true);
  assert.deepEqual(c.positions(), { 'ticks.AAPL': { 0: 5, 2: 102 }, 'ticks.MSFT': { 2: 50 } });
  assert.equal(c.stats().duplicates, 2);
});

test('reconnect resumes every channel from its positions, snapshot for unseen ones', async () => {
  const { c, WS, ws, clock, events } = await setup();
  c.subscribe(['ticks.AAPL', 'ticks.MSFT', 'ticks.GOOG']);
  ws.push({ op: 'ok', id: 1 });
  ws.push(msg('ticks.AAPL', 1, 10));
  ws.push(msg('ticks.AAPL', 3, 7));
  ws.push(msg('ticks.MSFT', 0, 4));
  ws.drop(1006);
  assert.equal(c.state, 'closed');
  assert.equal(WS.instances.length, 1);
  clock.advance(250); // first retry: at most minBackoff
  assert.equal(WS.instances.length, 2);
  const ws2 = WS.instances[1];
  assert.equal(ws2.url, 'ws://kpush.test/ws');
  ws2.accept();
  assert.deepEqual(ws2.sent, [
    { op: 'subscribe', id: 2, channels: ['ticks.AAPL'], since: { 'ticks.AAPL': { 1: 10, 3: 7 } } },
    { op: 'subscribe', id: 3, channels: ['ticks.MSFT'], since: { 'ticks.MSFT': { 0: 4 } } },
    { op: 'subscribe', id: 4, channels: ['ticks.GOOG'], snapshot: true },
  ]);
  ws2.push({ op: 'ok', id: 2, recovered: { 'ticks.AAPL': true } });
  ws2.push({ op: 'ok', id: 3, recovered: { 'ticks.MSFT': false } });
  assert.deepEqual(events.recovered, [
    { channel: 'ticks.AAPL', recovered: true },
    { channel: 'ticks.MSFT', recovered: false },
  ]);
  // The replay overlaps what was seen: only the new record comes through.
  ws2.push(msg('ticks.AAPL', 1, 10));
  ws2.push(msg('ticks.AAPL', 1, 11));
  assert.deepEqual(events.message.slice(3).map((m) => m.o), [11]);
  assert.equal(c.stats().reconnects, 1);
});

test('a subscribe made offline settles after the next connection subscribes it', async () => {
  const { c, WS, ws, clock } = await setup();
  ws.drop(1001, 'draining');
  const p = c.subscribe('ticks.TSLA');
  clock.advance(250);
  const ws2 = WS.instances[1];
  ws2.accept();
  assert.deepEqual(ws2.last(), { op: 'subscribe', id: 1, channels: ['ticks.TSLA'], snapshot: true });
  ws2.push({ op: 'ok', id: 1 });
  assert.deepEqual(await p, { op: 'ok', id: 1 });
});

test('a subscribe in flight when the connection drops is retried, not failed', async () => {
  const { c, WS, ws, clock } = await setup();
  const p = c.subscribe('ticks.NVDA');
  ws.drop(1006);
  clock.advance(250);
  const ws2 = WS.instances[1];
  ws2.accept();
  assert.equal(ws2.last().channels[0], 'ticks.NVDA');
  ws2.push({ op: 'ok', id: ws2.last().id });
  assert.equal((await p).op, 'ok');
});

test('backoff: full jitter, doubling from minBackoff, capped at maxBackoff, reset when stable', async () => {
  const caps = [];
  const { WS, ws, clock } = await setup({ minBackoff: 100, maxBackoff: 1000, stableAfter: 5000 });
  clock.delays.length = 0;
  ws.drop(1006);
  // random() returns 1, so each delay is the cap itself.
  for (let i = 0; i < 6; i++) {
    const d = clock.delays[clock.delays.length - 1];
    caps.push(d);
    clock.advance(d);
    WS.instances[WS.instances.length - 1].drop(1006); // handshake fails
  }
  assert.deepEqual(caps, [100, 200, 400, 800, 1000, 1000]);
  // A connection that stays open past stableAfter resets the backoff.
  clock.advance(clock.delays[clock.delays.length - 1]);
  const stable = WS.instances[WS.instances.length - 1];
  stable.accept();
  clock.advance(5000);
  clock.delays.length = 0;
  stable.drop(1006);
  assert.deepEqual(clock.delays, [100]);
});

test('backoff delays are uniformly drawn below the cap', async () => {
  for (const r of [0, 0.25, 0.999]) {
    const { WS, ws, clock } = await setup({ minBackoff: 200, maxBackoff: 800, random: () => r });
    clock.delays.length = 0;
    ws.drop(1006);
    for (let i = 0; i < 4; i++) {
      const d = clock.delays[clock.delays.length - 1];
      assert.ok(d >= 0 && d <= Math.min(800, 200 * 2 ** i), `retry ${i} waited ${d}`);
      assert.equal(d, r * Math.min(800, 200 * 2 ** i));
      clock.advance(d);
      WS.instances[WS.instances.length - 1].drop(1006);
    }
  }
});

test('token goes in the query string and 4001 waits for refresh()', async () => {
  const WS = fakeSocketClass();
  const clock = fakeClock();
  const errors = [];
  const c = new KPush('ws://kpush.test/ws?v=1&token=old', {
    WebSocket: WS, token: 'a b&c', setTimeout: clock.setTimeout, clearTimeout: clock.clearTimeout, pingInterval: 0,
  });
  c.on('error', (e) => errors.push(e));
  await flush();
  assert.equal(WS.instances[0].url, 'ws://kpush.test/ws?v=1&token=a%20b%26c');
  WS.instances[0].accept();
  c.subscribe('ticks.AAPL');
  WS.instances[0].push({ op: 'ok', id: 1 });
  WS.instances[0].push(msg('ticks.AAPL', 0, 42));
  WS.instances[0].drop(4001, 'token expired');
  assert.equal(errors.length, 1);
  assert.equal(errors[0].code, 'token_expired');
  assert.equal(errors[0].closeCode, 4001);
  clock.advance(60000);
  assert.equal(WS.instances.length, 1, 'no reconnect without a new token');
  assert.equal(clock.count(), 0, 'no timer left running');
  await c.refresh('new');
  assert.equal(WS.instances.length, 2);
  const ws2 = WS.instances[1];
  assert.equal(ws2.url, 'ws://kpush.test/ws?v=1&token=new');
  ws2.accept();
  assert.deepEqual(ws2.last().since, { 'ticks.AAPL': { 0: 42 } });
});

test('refresh on an open connection sends the refresh op', async () => {
  const { c, ws } = await setup();
  const p = c.refresh('t2');
  assert.deepEqual(ws.last(), { op: 'refresh', id: 1, token: 't2' });
  ws.push({ op: 'ok', id: 1 });
  assert.deepEqual(await p, { op: 'ok', id: 1 });
});

test('4008 slow consumer reconnects and resumes', async () => {
  const { c, WS, ws, clock, events } = await setup();
  c.subscribe('ticks.AMD');
  ws.push({ op: 'ok', id: 1 });
  ws.push(msg('ticks.AMD', 1, 9));
  ws.drop(4008, 'slow consumer');
  assert.equal(events.error.length, 0);
  clock.advance(250);
  const ws2 = WS.instances[1];
  ws2.accept();
  assert.deepEqual(ws2.last().since, { 'ticks.AMD': { 1: 9 } });
});

test('policy closes reconnect with a floor and a backoff that stability does not reset', async () => {
  const { WS, ws, clock, events } = await setup({ minBackoff: 100, maxBackoff: 10000, stableAfter: 1000, random: () => 0 });
  clock.delays.length = 0;
  let sock = ws;
  for (const code of [1008, 1009, 1003]) {
    sock.drop(code, 'policy');
    const d = clock.delays[clock.delays.length - 1];
    assert.ok(d >= 100, `close ${code}: waited ${d}ms, want at least minBackoff`);
    clock.advance(d);
    sock = WS.instances[WS.instances.length - 1];
    sock.accept();
    clock.advance(1000); // stable, but the fault count stays
  }
  assert.deepEqual(events.error.map((e) => e.closeCode), [1008, 1009, 1003]);
  assert.equal(WS.instances.length, 4);
});

test('close() sends 1000, rejects pending requests and stops reconnecting', async () => {
  const { c, WS, ws, clock, events } = await setup();
  const p = c.ping();
  c.close();
  assert.deepEqual(ws.closedWith, { code: 1000, reason: 'client closed' });
  await assert.rejects(p, /client closed/);
  assert.equal(c.state, 'closed');
  assert.equal(events.state[events.state.length - 1], 'closed');
  clock.advance(60000);
  assert.equal(WS.instances.length, 1);
  assert.equal(clock.count(), 0);
});

test('unsubscribe stops delivery and forgets positions', async () => {
  const { c, ws, events } = await setup();
  c.subscribe(['ticks.AAPL', 'ticks.META']);
  ws.push({ op: 'ok', id: 1 });
  ws.push(msg('ticks.META', 0, 1));
  const p = c.unsubscribe('ticks.META');
  assert.deepEqual(ws.last(), { op: 'unsubscribe', id: 2, channels: ['ticks.META'] });
  ws.push({ op: 'ok', id: 2 });
  await p;
  ws.push(msg('ticks.META', 0, 2));
  assert.deepEqual(events.message.map((m) => m.o), [1]);
  assert.deepEqual(c.positions(), {});
  assert.deepEqual(c.channels(), ['ticks.AAPL']);
});

test('base64 data is decoded into bytes', async () => {
  const { c, ws, events } = await setup();
  c.subscribe('raw.x');
  ws.push({ op: 'ok', id: 1 });
  ws.push({ op: 'msg', ch: 'raw.x', p: 0, o: 1, ts: 1, data: Buffer.from([0, 1, 254, 255]).toString('base64'), enc: 'base64' });
  ws.push({ op: 'msg', ch: 'raw.x', p: 0, o: 2, ts: 1, data: '!!not base64!!', enc: 'base64' });
  assert.equal(events.message.length, 1);
  assert.deepEqual(Array.from(events.message[0].bytes), [0, 1, 254, 255]);
  assert.ok(events.error.some((e) => e.code === 'bad_frame'));
});

test('conflated messages carry skipped through', async () => {
  const { c, ws, events } = await setup();
  c.subscribe('ticks.INTC');
  ws.push({ op: 'ok', id: 1 });
  ws.push({ ...msg('ticks.INTC', 0, 20), skipped: 3 });
  assert.equal(events.message[0].skipped, 3);
});

test('garbage from the server is reported, not thrown', async () => {
  const { ws, events } = await setup();
  ws.push('not json');
  ws.push({ op: 'msg', ch: 'x' });
  ws.push({ op: 'future-op' });
  assert.deepEqual(events.error.map((e) => e.code), ['bad_frame', 'bad_frame']);
});

test('client pings and drops a connection that stops answering', async () => {
  const { c, WS, ws, clock } = await setup({ pingInterval: 1000, requestTimeout: 500 });
  clock.advance(1000);
  assert.deepEqual(ws.last(), { op: 'ping', id: 1 });
  ws.push({ op: 'pong', id: 1 });
  await flush();
  clock.advance(1000);
  assert.deepEqual(ws.last(), { op: 'ping', id: 2 });
  clock.advance(500); // no pong
  await flush();
  assert.equal(ws.closedWith.code, 4000);
  assert.equal(c.state, 'closed');
  clock.advance(250);
  assert.equal(WS.instances.length, 2);
});

test('a throwing listener does not break delivery to the others', async () => {
  const { c, ws, events } = await setup();
  const thrown = [];
  const saved = globalThis.reportError;
  globalThis.reportError = (e) => thrown.push(e.message); // the browser's error reporting hook
  try {
    c.on('message', () => { throw new Error('listener bug'); });
    c.subscribe('ticks.NFLX');
    ws.push({ op: 'ok', id: 1 });
    ws.push(msg('ticks.NFLX', 0, 1));
    ws.push(msg('ticks.NFLX', 0, 2));
    assert.equal(events.message.length, 2);
  } finally {
    globalThis.reportError = saved;
  }
  assert.deepEqual(thrown, ['listener bug', 'listener bug']);
});

test('on() returns a remover and rejects unknown events', async () => {
  const { c, ws } = await setup();
  const got = [];
  const off = c.on('message', (m) => got.push(m.o));
  assert.throws(() => c.on('mesage', () => {}), TypeError);
  c.subscribe('a');
  ws.push({ op: 'ok', id: 1 });
  ws.push(msg('a', 0, 1));
  off();
  ws.push(msg('a', 0, 2));
  assert.deepEqual(got, [1]);
});

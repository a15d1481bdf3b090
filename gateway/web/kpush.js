/*
 * kpush.js: browser client for the kpush WebSocket push gateway, protocol v1.
 *
 * No dependencies. Load it as a classic script (it defines window.KPush) or
 * require() it from CommonJS (module.exports = KPush).
 *
 *   const c = new KPush('wss://push.example.com/ws', {token: 'abc'});
 *   c.on('message', (m) => console.log(m.ch, m.p, m.o, m.data));
 *   c.on('recovered', ({channel, recovered}) => { if (!recovered) resync(channel); });
 *   c.on('state', (s) => console.log('kpush', s));     // connecting | open | closed
 *   c.on('error', (f) => console.warn(f.code, f.message));
 *   await c.subscribe(['ticks.AAPL', 'ticks.MSFT']);   // resolves with the ok frame
 *
 * Options (all optional):
 *   token          sent as the `token` query parameter of the WebSocket URL.
 *                  Browsers cannot set headers on a WebSocket; to keep the
 *                  token out of URLs (and access logs) pass it as a
 *                  subprotocol instead: protocols: ['kpush.v1',
 *                  'kpush.bearer.' + token] (the server selects kpush.v1).
 *   protocols      subprotocols handed to the WebSocket constructor.
 *   minBackoff     first reconnect delay cap in ms (250).
 *   maxBackoff     largest reconnect delay cap in ms (10000).
 *   stableAfter    ms a connection must stay open before the backoff resets (5000).
 *   snapshot       ask for each new channel's last record on subscribe (true).
 *   pingInterval   ms between client pings; a ping without a pong within
 *                  requestTimeout drops the connection and reconnects (25000, 0 = off).
 *   requestTimeout ms to wait for the answer to a request (10000).
 *   WebSocket      WebSocket implementation (the global one by default).
 *   setTimeout, clearTimeout, random: injectable for tests.
 *
 * Resume: for every channel the client remembers the highest offset seen per
 * Kafka partition (snapshot records included). After a reconnect it
 * subscribes each channel again with `since` set to those positions, so the
 * server sends what was published meanwhile; channels never seen yet are
 * subscribed with `snapshot: true`. A message whose offset is not above the
 * last one seen for its channel and partition is a duplicate and is dropped.
 * The server's verdict comes as a 'recovered' event per channel, after the
 * replayed messages (the server answers once they are all sent): false means
 * records were lost (gone from Kafka or beyond the replay limit) and the
 * application should resynchronise that channel.
 *
 * Reconnects use exponential backoff with full jitter: the n-th retry waits a
 * uniformly random time in [0, min(maxBackoff, minBackoff * 2^n)]. The
 * counter resets once a connection has stayed open for stableAfter ms.
 *
 * Close codes: close() sends 1000 and never reconnects. 4001 (token expired)
 * emits 'error' and waits for refresh(token) before connecting again. 4008
 * (slow consumer), 1001 (server draining) and network loss reconnect and
 * resume. 1003, 1008 and 1009 mean the server refused what this client did:
 * they emit 'error' and reconnect with a backoff of at least minBackoff that
 * does not reset, so a client that keeps breaking a rule cannot spin.
 *
 * Messages: {op:'msg', ch, p, o, ts, data, enc?, snap?, skipped?}. With
 * enc === 'base64' the client adds `bytes`, a Uint8Array of the decoded data.
 *
 * Errors: every server error frame is emitted as 'error'; when it answers a
 * request, that request's promise also rejects with an Error carrying
 * `code` and `frame`.
 */
(function () {
  'use strict';

  var CHANNEL_RE = /^[A-Za-z0-9_.:@\/-]{1,200}$/;
  var WS_OPEN = 1;
  var EVENTS = ['message', 'recovered', 'state', 'error'];
  // Close codes that mean the server refused what this client did.
  var CLIENT_FAULT = [1003, 1008, 1009];
  var TOKEN_EXPIRED = 4001;

  function noop() {}

  function number(v, def) {
    return typeof v === 'number' && isFinite(v) && v >= 0 ? v : def;
  }

  function normalizeChannels(channels) {
    var list = typeof channels === 'string' ? [channels] : channels;
    if (!Array.isArray(list) || list.length === 0) {
      throw new TypeError('KPush: channels must be a channel name or a non-empty array of them');
    }
    var seen = new Set();
    var out = [];
    for (var i = 0; i < list.length; i++) {
      var ch = list[i];
      if (typeof ch !== 'string' || !CHANNEL_RE.test(ch)) {
        throw new TypeError('KPush: invalid channel name ' + JSON.stringify(ch));
      }
      if (!seen.has(ch)) {
        seen.add(ch);
        out.push(ch);
      }
    }
    return out;
  }

  // withQuery returns url with the query parameter key set to value,
  // replacing an existing one.
  function withQuery(url, key, value) {
    var hash = url.indexOf('#');
    if (hash >= 0) url = url.slice(0, hash);
    var q = url.indexOf('?');
    var base = q >= 0 ? url.slice(0, q) : url;
    var params = q >= 0 ? url.slice(q + 1).split('&').filter(function (kv) {
      return kv !== '' && kv !== key && kv.indexOf(key + '=') !== 0;
    }) : [];
    params.push(key + '=' + encodeURIComponent(value));
    return base + '?' + params.join('&');
  }

  function decodeBase64(s) {
    if (typeof atob === 'function') {
      var bin = atob(s);
      var out = new Uint8Array(bin.length);
      for (var i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
      return out;
    }
    if (typeof Buffer !== 'undefined') {
      return new Uint8Array(Buffer.from(s, 'base64'));
    }
    throw new Error('KPush: no base64 decoder available');
  }

  // mergeOk folds the ok frames of the requests one call needed into one.
  function mergeOk(oks) {
    oks = oks.filter(Boolean);
    if (oks.length === 0) return null;
    if (oks.length === 1) return oks[0];
    var out = {op: 'ok', id: oks[0].id};
    oks.forEach(function (ok) {
      if (ok.recovered) out.recovered = Object.assign(out.recovered || {}, ok.recovered);
    });
    return out;
  }

  function requestError(frame) {
    var err = new Error('kpush: ' + (frame.code || 'error') + ': ' + (frame.message || 'request failed'));
    err.code = frame.code;
    err.frame = frame;
    return err;
  }

  // A broken listener must not break the client or the other listeners; its
  // exception still reaches window.onerror and the console.
  function rethrowLater(e) {
    if (typeof reportError === 'function') {
      reportError(e);
      return;
    }
    setTimeout(function () { throw e; }, 0);
  }

  class KPush {
    constructor(url, options) {
      if (typeof url !== 'string' || url === '') {
        throw new TypeError('KPush: url must be a non-empty string');
      }
      var o = options || {};
      this._url = url;
      this._token = typeof o.token === 'string' ? o.token : '';
      this._protocols = o.protocols;
      this._minBackoff = number(o.minBackoff, 250);
      this._maxBackoff = Math.max(this._minBackoff, number(o.maxBackoff, 10000));
      this._stableAfter = number(o.stableAfter, 5000);
      this._snapshot = o.snapshot !== false;
      this._pingInterval = number(o.pingInterval, 25000);
      this._requestTimeout = number(o.requestTimeout, 10000);
      this._WebSocket = o.WebSocket || (typeof WebSocket !== 'undefined' ? WebSocket : null);
      if (typeof this._WebSocket !== 'function') {
        throw new TypeError('KPush: no WebSocket implementation; pass options.WebSocket');
      }
      this._timers = {
        set: o.setTimeout || function (fn, ms) { return setTimeout(fn, ms); },
        clear: o.clearTimeout || function (id) { clearTimeout(id); },
      };
      this._random = o.random || Math.random;

      this._listeners = new Map(EVENTS.map(function (e) { return [e, []]; }));
      this._channels = new Set();   // channels the application wants
      this._positions = new Map();  // channel -> Map(partition -> highest offset seen)
      this._pending = new Map();    // request id -> {op, channels, resolve, reject, timer}
      this._deferred = [];          // {channels, resolve, reject}: subscribes waiting for the next open
      this._nextId = 1;
      this._ws = null;
      this._state = 'closed';
      this._attempt = 0;            // reconnects since the last stable connection
      this._faults = 0;             // client-fault closes; never reset by stability
      this._reconnectTimer = null;
      this._stableTimer = null;
      this._pingTimer = null;
      this._stopped = false;        // close() was called
      this._needToken = false;      // closed with 4001; waiting for refresh()
      this._opens = 0;
      this._stats = {messages: 0, duplicates: 0, reconnects: 0};

      // Connect after the caller has had a chance to attach listeners.
      var self = this;
      Promise.resolve().then(function () {
        if (!self._stopped && !self._ws && self._reconnectTimer === null) self._open();
      });
    }

    /** The connection state: 'connecting', 'open' or 'closed'. */
    get state() { return this._state; }

    /** on(event, fn) adds a listener and returns a function that removes it. */
    on(event, fn) {
      var list = this._listeners.get(event);
      if (!list) throw new TypeError('KPush: unknown event ' + JSON.stringify(event));
      if (typeof fn !== 'function') throw new TypeError('KPush: listener must be a function');
      list.push(fn);
      var self = this;
      return function () { self.off(event, fn); };
    }

    off(event, fn) {
      var list = this._listeners.get(event);
      if (!list) return;
      var i = list.indexOf(fn);
      if (i >= 0) list.splice(i, 1);
    }

    /**
     * subscribe(channels) adds channels and returns a Promise of the server's
     * ok frame. Offline, the channels are subscribed on the next connection
     * and the promise settles then.
     */
    subscribe(channels) {
      var list;
      try { list = normalizeChannels(channels); } catch (e) { return Promise.reject(e); }
      var self = this;
      var added = list.filter(function (ch) { return !self._channels.has(ch); });
      list.forEach(function (ch) { self._channels.add(ch); });
      if (!this._isOpen()) {
        return new Promise(function (resolve, reject) {
          self._deferred.push({channels: list, resolve: resolve, reject: reject});
        });
      }
      return this._sendSubscribe(list).catch(function (err) {
        // The server refused: do not resubscribe these on every reconnect.
        if (err && err.frame) added.forEach(function (ch) { self._forget(ch); });
        throw err;
      });
    }

    /** unsubscribe(channels) removes channels; a Promise of the ok frame (null offline). */
    unsubscribe(channels) {
      var list;
      try { list = normalizeChannels(channels); } catch (e) { return Promise.reject(e); }
      var self = this;
      list = list.filter(function (ch) { return self._channels.has(ch); });
      list.forEach(function (ch) { self._forget(ch); });
      this._deferred = this._deferred.filter(function (d) {
        d.channels = d.channels.filter(function (ch) { return self._channels.has(ch); });
        if (d.channels.length === 0) d.resolve(null);
        return d.channels.length > 0;
      });
      if (list.length === 0 || !this._isOpen()) return Promise.resolve(null);
      return this._request({op: 'unsubscribe', channels: list});
    }

    /** ping() returns a Promise of the pong frame. */
    ping() {
      if (!this._isOpen()) return Promise.reject(new Error('kpush: not connected'));
      return this._request({op: 'ping'});
    }

    /**
     * refresh(token) replaces the token. Open: sends it to the server and
     * returns a Promise of the ok frame. After a 4001 close: connects again
     * with it. Otherwise the next connection uses it.
     */
    refresh(token) {
      if (typeof token !== 'string' || token === '') {
        return Promise.reject(new TypeError('KPush: token must be a non-empty string'));
      }
      this._token = token;
      if (this._needToken) {
        this._needToken = false;
        this._attempt = 0;
        if (!this._stopped && !this._ws && this._reconnectTimer === null) this._open();
        return Promise.resolve(null);
      }
      if (this._isOpen()) return this._request({op: 'refresh', token: token});
      return Promise.resolve(null);
    }

    /** positions() returns {channel: {partition: offset}}, a copy. */
    positions() {
      var out = {};
      this._positions.forEach(function (parts, ch) {
        var o = {};
        parts.forEach(function (off, p) { o[String(p)] = off; });
        out[ch] = o;
      });
      return out;
    }

    /** channels() lists the channels this client keeps subscribed. */
    channels() { return Array.from(this._channels); }

    /** stats() counts messages emitted, duplicates dropped and reconnects. */
    stats() { return Object.assign({}, this._stats); }

    /** connect() (re)starts a client stopped by close() or waiting for a token. */
    connect() {
      this._stopped = false;
      this._needToken = false;
      if (this._ws) return;
      this._clearTimer('_reconnectTimer');
      this._open();
    }

    /** close() closes with 1000 and stops reconnecting; positions are kept. */
    close() {
      this._stopped = true;
      this._clearTimer('_reconnectTimer');
      var ws = this._ws;
      if (ws) {
        this._ws = null;
        this._detach(ws);
        try { ws.close(1000, 'client closed'); } catch (e) { /* already closing */ }
      }
      this._clearTimer('_stableTimer');
      this._clearTimer('_pingTimer');
      this._clearPendingTimers();
      var closed = new Error('kpush: client closed');
      var pending = this._pending;
      this._pending = new Map();
      pending.forEach(function (e) { e.reject(closed); });
      this._deferred.forEach(function (d) { d.reject(closed); });
      this._deferred = [];
      this._setState('closed', {code: 1000, reason: 'client closed'});
    }

    // ---- connection ----

    _isOpen() {
      return this._state === 'open' && this._ws !== null && this._ws.readyState === WS_OPEN;
    }

    _connectURL() {
      return this._token ? withQuery(this._url, 'token', this._token) : this._url;
    }

    _open() {
      this._reconnectTimer = null;
      if (this._stopped || this._needToken || this._ws) return;
      this._setState('connecting');
      var ws;
      try {
        ws = this._protocols !== undefined
          ? new this._WebSocket(this._connectURL(), this._protocols)
          : new this._WebSocket(this._connectURL());
      } catch (e) {
        this._emit('error', {op: 'error', code: 'connect_failed', message: String(e && e.message || e)});
        this._setState('closed', {code: 1006, reason: 'connect failed'});
        this._scheduleReconnect(false);
        return;
      }
      this._ws = ws;
      var self = this;
      ws.onopen = function () { if (self._ws === ws) self._onOpen(ws); };
      ws.onmessage = function (ev) { if (self._ws === ws) self._onFrame(ev.data); };
      ws.onclose = function (ev) { self._onClose(ws, ev.code, ev.reason); };
      ws.onerror = noop; // a close event always follows; browsers give no detail here
    }

    _detach(ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    }

    _onOpen(ws) {
      var self = this;
      if (this._opens++ > 0) this._stats.reconnects++;
      this._setState('open');
      this._stableTimer = this._timers.set(function () {
        self._stableTimer = null;
        self._attempt = 0;
      }, this._stableAfter);
      this._schedulePing(ws);
      this._resubscribe();
    }

    _schedulePing(ws) {
      if (this._pingInterval <= 0) return;
      var self = this;
      this._pingTimer = this._timers.set(function () {
        self._pingTimer = null;
        if (self._ws !== ws) return;
        self._request({op: 'ping'}).then(function () {
          if (self._ws === ws) self._schedulePing(ws);
        }, function (err) {
          if (self._ws !== ws) return;
          if (err && err.frame) { self._schedulePing(ws); return; } // answered, so alive
          // No pong: the connection is dead even if the browser has not noticed.
          try { ws.close(4000, 'ping timeout'); } catch (e) { /* ignore */ }
          self._onClose(ws, 1006, 'ping timeout');
        });
      }, this._pingInterval);
    }

    _onClose(ws, code, reason) {
      if (this._ws !== ws) return;
      this._ws = null;
      this._detach(ws);
      this._clearTimer('_stableTimer');
      this._clearTimer('_pingTimer');
      this._clearPendingTimers();
      var self = this;
      var pending = this._pending;
      this._pending = new Map();
      var lost = new Error('kpush: connection closed before the reply');
      pending.forEach(function (e) {
        // A subscribe in flight is retried by the resubscribe of the next connection.
        var still = e.channels ? e.channels.filter(function (ch) { return self._channels.has(ch); }) : null;
        if (still && still.length > 0 && !self._stopped) {
          self._deferred.push({channels: still, resolve: e.resolve, reject: e.reject});
        } else if (still) {
          e.resolve(null);
        } else {
          e.reject(lost);
        }
      });
      this._setState('closed', {code: code, reason: reason || ''});
      if (this._stopped) return;
      if (code === TOKEN_EXPIRED) {
        this._needToken = true;
        this._emit('error', {op: 'error', code: 'token_expired', message: reason || 'token expired; call refresh(token)', closeCode: code});
        return;
      }
      var fault = CLIENT_FAULT.indexOf(code) >= 0;
      if (fault) {
        this._faults++;
        this._emit('error', {op: 'error', code: 'closed', message: reason || 'connection closed by the server with ' + code, closeCode: code});
      }
      this._scheduleReconnect(fault);
    }

    // backoffCap is the upper bound of the n-th reconnect delay.
    _backoffCap(n) {
      return Math.min(this._maxBackoff, this._minBackoff * Math.pow(2, Math.min(n, 30)));
    }

    _scheduleReconnect(fault) {
      var n = Math.max(this._attempt, fault ? this._faults : 0);
      this._attempt++;
      var delay = this._random() * this._backoffCap(n);
      if (fault) delay = Math.max(delay, this._minBackoff);
      var self = this;
      this._reconnectTimer = this._timers.set(function () { self._open(); }, delay);
    }

    _clearTimer(name) {
      if (this[name] !== null) {
        this._timers.clear(this[name]);
        this[name] = null;
      }
    }

    _clearPendingTimers() {
      var timers = this._timers;
      this._pending.forEach(function (e) {
        if (e.timer !== null) timers.clear(e.timer);
        e.timer = null;
      });
    }

    _setState(state, detail) {
      if (this._state === state) return;
      this._state = state;
      this._emit('state', state, detail);
    }

    _emit(event, a, b) {
      var list = this._listeners.get(event).slice();
      for (var i = 0; i < list.length; i++) {
        try { list[i](a, b); } catch (e) { rethrowLater(e); }
      }
    }

    // ---- requests ----

    _send(frame) {
      if (!this._isOpen()) return false;
      try {
        this._ws.send(JSON.stringify(frame));
        return true;
      } catch (e) {
        return false;
      }
    }

    // _request sends frame with a fresh id and returns a Promise of the
    // reply. Subscribes carry their channels so that a connection loss
    // defers them to the next connection instead of failing them.
    _request(frame, channels) {
      var self = this;
      return new Promise(function (resolve, reject) {
        var id = self._nextId++;
        var msg = Object.assign({op: frame.op, id: id}, frame);
        if (!self._send(msg)) {
          if (channels) self._deferred.push({channels: channels, resolve: resolve, reject: reject});
          else reject(new Error('kpush: not connected'));
          return;
        }
        var entry = {op: frame.op, channels: channels || null, resolve: resolve, reject: reject, timer: null};
        entry.timer = self._timers.set(function () {
          if (self._pending.get(id) !== entry) return;
          self._pending.delete(id);
          reject(new Error('kpush: no reply to ' + frame.op + ' ' + id + ' within ' + self._requestTimeout + 'ms'));
        }, self._requestTimeout);
        self._pending.set(id, entry);
      });
    }

    // _sendSubscribe subscribes channels: those with known positions resume
    // with since, the others ask for a snapshot. Resolves with the merged ok.
    _sendSubscribe(channels) {
      var self = this;
      var resume = [];
      var fresh = [];
      channels.forEach(function (ch) {
        var parts = self._positions.get(ch);
        (parts && parts.size > 0 ? resume : fresh).push(ch);
      });
      var reqs = [];
      if (resume.length > 0) {
        var since = {};
        var all = this.positions();
        resume.forEach(function (ch) { since[ch] = all[ch]; });
        reqs.push(this._request({op: 'subscribe', channels: resume, since: since}, resume));
      }
      if (fresh.length > 0) {
        var f = {op: 'subscribe', channels: fresh};
        if (this._snapshot) f.snapshot = true;
        reqs.push(this._request(f, fresh));
      }
      return Promise.all(reqs).then(mergeOk);
    }

    // _resubscribe runs on every open: one subscribe per channel, so that a
    // channel the server now refuses does not hold back the others.
    _resubscribe() {
      var self = this;
      var deferred = this._deferred;
      this._deferred = [];
      var results = new Map();
      this._channels.forEach(function (ch) {
        var p = self._sendSubscribe([ch]).catch(function (err) {
          if (err && err.frame) self._forget(ch);
          throw err;
        });
        p.catch(noop); // reported through 'error'; callers below see it too
        results.set(ch, p);
      });
      deferred.forEach(function (d) {
        var ps = d.channels.filter(function (ch) { return results.has(ch); })
          .map(function (ch) { return results.get(ch); });
        if (ps.length === 0) { d.resolve(null); return; }
        Promise.all(ps).then(function (oks) { d.resolve(mergeOk(oks)); }, d.reject);
      });
    }

    _forget(ch) {
      this._channels.delete(ch);
      this._positions.delete(ch);
    }

    // ---- frames from the server ----

    _onFrame(data) {
      if (typeof data !== 'string') return; // protocol v1 is text only
      var f;
      try { f = JSON.parse(data); } catch (e) { f = null; }
      if (!f || typeof f !== 'object') {
        this._emit('error', {op: 'error', code: 'bad_frame', message: 'unparseable frame from the server'});
        return;
      }
      switch (f.op) {
        case 'msg': this._onMsg(f); break;
        case 'ok':
        case 'pong': this._onReply(f); break;
        case 'error': this._onError(f); break;
        default: break; // unknown ops are ignored for forward compatibility
      }
    }

    _onMsg(f) {
      var ch = f.ch;
      if (typeof ch !== 'string' || !Number.isInteger(f.p) || !Number.isInteger(f.o)) {
        this._emit('error', {op: 'error', code: 'bad_frame', message: 'msg frame without ch, p or o'});
        return;
      }
      if (!this._channels.has(ch)) return; // in flight when we unsubscribed
      var parts = this._positions.get(ch);
      if (!parts) {
        parts = new Map();
        this._positions.set(ch, parts);
      }
      var last = parts.get(f.p);
      if (last !== undefined && f.o <= last) {
        this._stats.duplicates++;
        return;
      }
      parts.set(f.p, f.o);
      if (f.enc === 'base64' && typeof f.data === 'string') {
        try {
          f.bytes = decodeBase64(f.data);
        } catch (e) {
          this._emit('error', {op: 'error', code: 'bad_frame', message: 'invalid base64 data on ' + ch});
          return;
        }
      }
      this._stats.messages++;
      this._emit('message', f);
    }

    _onReply(f) {
      if (f.op === 'ok' && f.recovered && typeof f.recovered === 'object') {
        var self = this;
        Object.keys(f.recovered).forEach(function (ch) {
          if (self._channels.has(ch)) self._emit('recovered', {channel: ch, recovered: f.recovered[ch] === true});
        });
      }
      var e = this._pending.get(f.id);
      if (!e) return; // timed out already
      this._pending.delete(f.id);
      if (e.timer !== null) this._timers.clear(e.timer);
      e.resolve(f);
    }

    _onError(f) {
      this._emit('error', f);
      var e = f.id !== undefined ? this._pending.get(f.id) : undefined;
      if (!e) return;
      this._pending.delete(f.id);
      if (e.timer !== null) this._timers.clear(e.timer);
      e.reject(requestError(f));
    }
  }

  KPush.decodeBase64 = decodeBase64;
  KPush.CHANNEL_RE = CHANNEL_RE;

  if (typeof module === 'object' && module !== null && typeof module.exports === 'object') {
    module.exports = KPush;
  }
  if (typeof window !== 'undefined') {
    window.KPush = KPush;
  }
})();

/*
 * demo.js: the kpush market-feed demo page.
 *
 * Subscribes to ticks.<SYMBOL> for every checked symbol through kpush.js and
 * shows the latest tick of each. The WebSocket path comes from the page's
 * <meta name="kpush-ws-path">, filled in by the server: "/ws" (same host),
 * ":8080/ws" (same host name, another port) or a full ws:// or wss:// URL.
 *
 * Query parameters: ?symbols=AAPL,NVDA picks the symbols, ?token=... is
 * handed to the client.
 *
 * Gap detection relies on the simulator's tick record
 *   {"sym":"AAPL","price":189.23,"bid":189.22,"ask":189.24,"size":300,"seq":123,"ts":1764000000123}
 * whose seq grows by one per symbol: a jump larger than 1 + the message's
 * `skipped` count (conflation) is a gap. A channel whose recovery failed
 * starts counting afresh.
 *
 * window.kpushDemo exposes the client and live counters for browser tests.
 */
(function () {
  'use strict';

  var params = new URLSearchParams(location.search);
  var inputs = Array.prototype.slice.call(document.querySelectorAll('input[name="symbol"]'));
  var order = inputs.map(function (i) { return i.value; });
  var tbody = document.getElementById('rows');
  var statusEl = document.getElementById('status');
  var logEl = document.getElementById('log');
  var statEls = {
    received: document.getElementById('stat-received'),
    rate: document.getElementById('stat-rate'),
    gaps: document.getElementById('stat-gaps'),
    recoveries: document.getElementById('stat-recoveries'),
    failed: document.getElementById('stat-failed'),
    reconnects: document.getElementById('stat-reconnects'),
    duplicates: document.getElementById('stat-duplicates'),
  };

  function wsURL() {
    var meta = document.querySelector('meta[name="kpush-ws-path"]');
    var v = (meta && meta.getAttribute('content')) || '/ws';
    if (/^wss?:\/\//i.test(v)) return v;
    var scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    if (v.charAt(0) === ':') return scheme + '//' + location.hostname + v;
    return scheme + '//' + location.host + v;
  }

  var wanted = params.get('symbols');
  if (wanted) {
    var set = wanted.toUpperCase().split(',');
    inputs.forEach(function (i) { i.checked = set.indexOf(i.value) >= 0; });
  }

  var client = new KPush(wsURL(), {token: params.get('token') || undefined});

  var demo = {
    client: client,
    received: 0,
    gaps: 0,
    recoveries: 0,
    failedRecoveries: 0,
    errors: 0,
    state: client.state,
    lastPrices: {},
    positions: function () { return client.positions(); },
  };
  window.kpushDemo = demo;

  var rows = new Map(); // symbol -> row
  var dirty = new Set();
  var framePending = false;
  var total = {count: 0, last: 0, rate: 0};

  // ---- rows ----

  function cell(tr, cls) {
    var td = document.createElement('td');
    td.className = cls;
    td.textContent = '\u2014';
    tr.appendChild(td);
    return td;
  }

  function addRow(sym) {
    if (rows.has(sym)) return rows.get(sym);
    var tr = document.createElement('tr');
    tr.className = 'pending';
    tr.dataset.symbol = sym;
    var row = {
      sym: sym,
      tr: tr,
      cells: {
        sym: cell(tr, 'sym'),
        price: cell(tr, 'num price'),
        change: cell(tr, 'num change'),
        bid: cell(tr, 'num'),
        ask: cell(tr, 'num'),
        size: cell(tr, 'num'),
        time: cell(tr, 'time'),
        po: cell(tr, 'po'),
        rate: cell(tr, 'num'),
      },
      open: null,   // first price seen on this page
      price: null,
      dir: 0,       // direction of the last price move
      seq: null,    // last tick seq, for gap detection
      verdict: false, // resumed; gaps wait for the server's recovered verdict
      suspect: 0,   // gaps seen while waiting for it
      count: 0,
      last: 0,
      rate: 0,
      tick: null,
      msg: null,
    };
    row.cells.sym.textContent = sym;
    // Keep the table in picker order.
    var after = null;
    for (var i = order.indexOf(sym) + 1; i < order.length && !after; i++) {
      if (rows.has(order[i])) after = rows.get(order[i]).tr;
    }
    tbody.insertBefore(tr, after);
    rows.set(sym, row);
    return row;
  }

  function removeRow(sym) {
    var row = rows.get(sym);
    if (!row) return;
    tbody.removeChild(row.tr);
    rows.delete(sym);
    dirty.delete(row);
    delete demo.lastPrices[sym];
  }

  function setSubscribed(sym, on) {
    var ch = 'ticks.' + sym;
    if (!on) {
      removeRow(sym);
      client.unsubscribe(ch).catch(function () { /* offline: nothing to undo */ });
      return;
    }
    addRow(sym);
    client.subscribe(ch).catch(function (err) {
      log('subscribe ' + ch + ' failed: ' + err.message);
      removeRow(sym);
      inputs.forEach(function (i) { if (i.value === sym) i.checked = false; });
    });
  }

  // ---- messages ----

  function onMessage(m) {
    if (m.ch.indexOf('ticks.') !== 0) return;
    var row = rows.get(m.ch.slice(6));
    if (!row) return;
    demo.received++;
    total.count++;
    row.count++;
    var t = m.data;
    if (!t || typeof t !== 'object') return;
    if (Number.isInteger(t.seq)) {
      if (row.seq !== null && t.seq > row.seq + 1 + (m.skipped || 0)) {
        if (row.verdict) {
          row.suspect++;
        } else {
          demo.gaps++;
          log('gap on ' + row.sym + ': seq ' + row.seq + ' then ' + t.seq);
        }
      }
      row.seq = t.seq;
    }
    if (typeof t.price === 'number') {
      if (row.open === null) row.open = t.price;
      row.dir = row.price === null ? 0 : Math.sign(t.price - row.price);
      row.price = t.price;
      demo.lastPrices[row.sym] = t.price;
    }
    row.tick = t;
    row.msg = m;
    markDirty(row);
  }

  function markDirty(row) {
    dirty.add(row);
    if (!framePending) {
      framePending = true;
      requestAnimationFrame(render);
    }
  }

  // ---- rendering, at most once per frame ----

  function fixed(v) { return typeof v === 'number' ? v.toFixed(2) : '\u2014'; }

  function pad(n, w) { return String(n).padStart(w, '0'); }

  function clock(ms) {
    if (typeof ms !== 'number') return '\u2014';
    var d = new Date(ms);
    return pad(d.getHours(), 2) + ':' + pad(d.getMinutes(), 2) + ':' + pad(d.getSeconds(), 2) + '.' + pad(d.getMilliseconds(), 3);
  }

  function flash(el, dir) {
    el.classList.remove('flash-up', 'flash-down');
    if (dir === 0) return;
    void el.offsetWidth; // restart the animation
    el.classList.add(dir > 0 ? 'flash-up' : 'flash-down');
  }

  function renderRow(row) {
    var c = row.cells;
    c.rate.textContent = String(row.rate);
    if (!row.msg) return;
    var t = row.tick;
    row.tr.classList.remove('pending');
    c.price.textContent = fixed(row.price);
    if (row.price !== null && row.open !== null) {
      var diff = row.price - row.open;
      var pct = row.open !== 0 ? (diff / row.open) * 100 : 0;
      c.change.textContent = (diff >= 0 ? '+' : '') + diff.toFixed(2) + ' (' + (pct >= 0 ? '+' : '') + pct.toFixed(2) + '%)';
      c.change.classList.toggle('change-up', diff > 0);
      c.change.classList.toggle('change-down', diff < 0);
    }
    c.bid.textContent = fixed(t.bid);
    c.ask.textContent = fixed(t.ask);
    c.size.textContent = typeof t.size === 'number' ? t.size.toLocaleString() : '\u2014';
    c.time.textContent = clock(typeof t.ts === 'number' ? t.ts : row.msg.ts);
    c.po.textContent = row.msg.p + ' / ' + row.msg.o + (row.msg.snap ? ' (snapshot)' : '');
    flash(c.price, row.dir);
    row.dir = 0;
  }

  function renderStats() {
    var s = client.stats();
    statEls.received.textContent = demo.received.toLocaleString();
    statEls.rate.textContent = String(total.rate);
    statEls.gaps.textContent = String(demo.gaps);
    statEls.gaps.className = demo.gaps === 0 ? 'good' : 'bad';
    statEls.recoveries.textContent = String(demo.recoveries);
    statEls.failed.textContent = String(demo.failedRecoveries);
    statEls.reconnects.textContent = String(s.reconnects);
    statEls.duplicates.textContent = String(s.duplicates);
  }

  function render() {
    framePending = false;
    dirty.forEach(renderRow);
    dirty.clear();
    renderStats();
  }

  // Message rates over the last second.
  setInterval(function () {
    total.rate = total.count - total.last;
    total.last = total.count;
    rows.forEach(function (row) {
      row.rate = row.count - row.last;
      row.last = row.count;
      dirty.add(row);
    });
    if (!framePending) {
      framePending = true;
      requestAnimationFrame(render);
    }
  }, 1000);

  function log(text) {
    logEl.textContent = clock(Date.now()) + '  ' + text;
  }

  // ---- client events ----

  client.on('message', onMessage);

  client.on('state', function (state, info) {
    demo.state = state;
    statusEl.className = 'status status-' + state;
    var text = state;
    if (state === 'closed' && info && info.code) text += ' (' + info.code + (info.reason ? ' ' + info.reason : '') + ')';
    statusEl.textContent = text;
    if (state === 'open') {
      log('connected to ' + wsURL());
      // Channels resumed with positions get a recovered verdict; a gap before
      // it counts only if the server claims the recovery was complete.
      var pos = client.positions();
      rows.forEach(function (row) {
        row.verdict = Object.prototype.hasOwnProperty.call(pos, 'ticks.' + row.sym);
        row.suspect = 0;
      });
    }
  });

  client.on('recovered', function (r) {
    var row = rows.get(r.channel.slice(6));
    if (r.recovered) {
      demo.recoveries++;
      if (row && row.suspect > 0) {
        demo.gaps += row.suspect;
        log('gap on ' + row.sym + ' although the server recovered it');
      }
    } else {
      demo.failedRecoveries++;
      if (row && row.suspect === 0) row.seq = null; // records were lost; count afresh from here
      log('could not recover ' + r.channel + ': records were lost, resynchronised');
    }
    if (row) {
      row.verdict = false;
      row.suspect = 0;
    }
    renderStats();
  });

  client.on('error', function (f) {
    demo.errors++;
    log((f.code || 'error') + ': ' + (f.message || ''));
  });

  document.getElementById('picker').addEventListener('change', function (e) {
    var input = e.target;
    if (input && input.name === 'symbol') setSubscribed(input.value, input.checked);
  });

  inputs.forEach(function (i) { if (i.checked) setSubscribed(i.value, true); });
  renderStats();
})();

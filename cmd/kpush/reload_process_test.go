package main

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kpush/kpush/gateway/client"
)

// waitLog waits for a log record at index from or later that match
// accepts, and returns its index and the record.
func (p *kpushProcess) waitLog(t *testing.T, d time.Duration, from int, what string, match func(map[string]any) bool) (int, map[string]any) {
	t.Helper()
	var i int
	var found map[string]any
	waitFor(t, d, what, func() bool {
		p.logMu.Lock()
		defer p.logMu.Unlock()
		for i = from; i < len(p.logs); i++ {
			if match(p.logs[i]) {
				found = p.logs[i]
				return true
			}
		}
		return false
	})
	return i, found
}

// logsBefore returns a copy of the records before index n.
func (p *kpushProcess) logsBefore(n int) []map[string]any {
	p.logMu.Lock()
	defer p.logMu.Unlock()
	return append([]map[string]any(nil), p.logs[:min(n, len(p.logs))]...)
}

// logMsg matches a record by its message (and trigger, if not empty).
func logMsg(msg, trigger string) func(map[string]any) bool {
	return func(m map[string]any) bool {
		return m["msg"] == msg && (trigger == "" || m["trigger"] == trigger)
	}
}

func strs(v any) []string {
	var out []string
	for _, x := range v.([]any) {
		out = append(out, x.(string))
	}
	return out
}

// SIGHUP to the kpush binary changes routes (a new topic's records arrive),
// a limit (max_subscriptions) and the log level; keys that need a restart
// are reported and keep their values; a file that fails validation is
// rejected whole and the running configuration keeps working.
func TestSIGHUPReloadsRoutesLimitsAndLogLevel(t *testing.T) {
	k := startKafka(t)
	ta := k.topic(t, "hup-a", 1)
	tb := k.topic(t, "hup-b", 1)
	conf := func(maxSubs int, level, clientID, check string, topics ...string) string {
		var routes []string
		for _, tp := range topics {
			routes = append(routes, fmt.Sprintf("{topic: %s, channel: %q}", tp, tp[:5]+".{key}"))
		}
		return fmt.Sprintf(`
listen: "127.0.0.1:0"
admin_listen: "127.0.0.1:0"
gateway: {drain_timeout: 1s, max_subscriptions: %d}
kafka: {brokers: [%q], client_id: %s, metadata_interval: 500ms}
routes: [%s]
log: {level: %s, format: json}
config_check_interval: %s
`, maxSubs, k.brokers[0], clientID, strings.Join(routes, ", "), level, check)
	}
	// Checking for file changes every hour: only SIGHUP reloads v2.
	p := startKpushProcess(t, conf(2, "info", "kpush", "1h", ta))
	waitFor(t, 30*time.Second, "readyz 200", func() bool { return httpStatus(p.adminURL+"/readyz") == http.StatusOK })

	ca := dial(t, p.wsURL)
	ca.subscribe(t, "hup-a.x")
	if f := ca.request(t, &client.Request{Op: "subscribe", Channels: []string{"hup-b.y", "hup-b.z"}}); f.Code != "too_many_subscriptions" {
		t.Fatalf("3 subscriptions with max_subscriptions 2: %+v", f)
	}
	cb := dial(t, p.wsURL)
	cb.subscribe(t, "hup-b.k")
	r := k.produce(t, rec(ta, 0, "x", `{"v":1}`))[0]
	checkMsg(t, ca.next(t, 10*time.Second), "hup-a.x", r)

	// v2: route topic b, a third subscription, debug logging, a client_id
	// (needs a restart), and a file check every 200ms.
	writeFileAtomic(t, p.path, conf(3, "debug", "kpush-2", "200ms", ta, tb))
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	at, reloaded := p.waitLog(t, 10*time.Second, 0, "the SIGHUP reload", logMsg("config reloaded", "SIGHUP"))
	changed := strs(reloaded["changed"])
	slices.Sort(changed)
	if want := []string{"config_check_interval", "gateway.max_subscriptions", "log.level", "routes"}; !slices.Equal(changed, want) {
		t.Errorf("reload changed %q, want %q", changed, want)
	}
	_, restart := p.waitLog(t, time.Second, 0, "the restart warning", logMsg("config keys changed that take effect only after a restart; they keep their running values", "SIGHUP"))
	if keys := strs(restart["keys"]); !slices.Equal(keys, []string{"kafka.client_id"}) {
		t.Errorf("keys needing a restart %q, want [kafka.client_id]", keys)
	}
	if got := metricAt(t, p.adminURL, "kpush_config_restart_pending"); got != 1 {
		t.Errorf("kpush_config_restart_pending = %v, want 1", got)
	}

	// Log level: nothing at debug before the reload, debug records after
	// (the file check logs one per 200ms).
	for _, m := range p.logsBefore(at) {
		if m["level"] == "DEBUG" {
			t.Errorf("debug record before the reload to debug: %v", m)
		}
	}
	p.waitLog(t, 10*time.Second, at, "a debug record", func(m map[string]any) bool { return m["level"] == "DEBUG" })

	// Routes: topic b is read, from its end (kafka.start latest).
	waitFor(t, 20*time.Second, "topic b read", func() bool {
		return metricAt(t, p.adminURL, "kpush_consumer_partitions") == 2 && httpStatus(p.adminURL+"/readyz") == http.StatusOK
	})
	r = k.produce(t, rec(tb, 0, "k", `{"v":2}`))[0]
	checkMsg(t, cb.next(t, 10*time.Second), "hup-b.k", r)
	// Limit: a third subscription is allowed, a fourth is not.
	ca.subscribe(t, "hup-b.y", "hup-b.z")

	// v3 fails validation; the file check finds it (no SIGHUP).
	writeFileAtomic(t, p.path, conf(-5, "debug", "kpush-2", "200ms", ta))
	_, rejected := p.waitLog(t, 10*time.Second, at, "the rejection", logMsg("config reload rejected; the running configuration stays", "file change"))
	if err, _ := rejected["err"].(string); !strings.Contains(err, "gateway.max_subscriptions") {
		t.Errorf("rejection %q does not name gateway.max_subscriptions", err)
	}
	if got := metricAt(t, p.adminURL, "kpush_config_reloads_total", `result="rejected"`); got != 1 {
		t.Errorf("kpush_config_reloads_total{result=rejected} = %v, want 1", got)
	}
	// v2 stays in force: routes (b is still routed), limit 3, and records
	// keep flowing.
	if f := ca.request(t, &client.Request{Op: "subscribe", Channels: []string{"hup-a.w"}}); f.Code != "too_many_subscriptions" {
		t.Fatalf("4th subscription with max_subscriptions 3: %+v", f)
	}
	rb := k.produce(t, rec(tb, 0, "z", `{"v":3}`))[0]
	checkMsg(t, ca.next(t, 10*time.Second), "hup-b.z", rb)
	rb = k.produce(t, rec(tb, 0, "k", `{"v":4}`))[0]
	checkMsg(t, cb.next(t, 10*time.Second), "hup-b.k", rb)
	ra := k.produce(t, rec(ta, 0, "x", `{"v":5}`))[0]
	checkMsg(t, ca.next(t, 10*time.Second), "hup-a.x", ra)
	if got := metricAt(t, p.adminURL, "kpush_config_reloads_total", `result="applied"`); got != 1 {
		t.Errorf("kpush_config_reloads_total{result=applied} = %v, want 1", got)
	}

	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.exited:
		if p.err != nil {
			t.Fatalf("kpush exited with %v after the reloads, want status 0", p.err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("kpush did not exit after SIGTERM")
	}
}

package consumer

import (
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/kpush/kpush/router"
	"github.com/prometheus/client_golang/prometheus"
)

func TestCompileRoutesPolicy(t *testing.T) {
	rs, err := CompileRoutes([]Route{
		{Topic: "t", Channel: "a"},
		{Topic: "t", Channel: "b", Format: FormatBytes, Slow: SlowConflate, MaxRate: 2, Public: true},
		{Topic: "u", Channel: "c.{key}", Snapshot: true, History: History{MaxRecords: 10}},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []router.Policy{
		{},
		{Binary: true, Conflate: true, MaxRate: 2, Public: true},
		{Keep: &router.Retention{Last: true, HistoryRecords: 10, HistoryBytes: 1 << 20, HistoryAge: 5 * time.Minute}},
	}
	for i, w := range want {
		got := *rs.all[i].policy
		if got.Binary != w.Binary || got.Conflate != w.Conflate || got.MaxRate != w.MaxRate || got.Public != w.Public ||
			(got.Keep == nil) != (w.Keep == nil) || (w.Keep != nil && *got.Keep != *w.Keep) {
			t.Errorf("routes[%d] policy %+v (keep %+v), want %+v (keep %+v)", i, got, got.Keep, w, w.Keep)
		}
	}
	if got := rs.topics; !slices.Equal(got, []string{"t", "u"}) {
		t.Errorf("topics %v, want [t u]", got)
	}
	if !rs.Public("b") || rs.Public("a") || rs.Public("c.x") {
		t.Error("Public: only channel b comes from a public route")
	}
}

// dropRecorder is a Destination that records what SetRoutes drops.
type dropRecorder struct {
	mu      sync.Mutex
	dropped []*router.Retention
}

func (d *dropRecorder) Deliver(*router.Record) {}
func (d *dropRecorder) DropRetention(keeps ...*router.Retention) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.dropped = append(d.dropped, keeps...)
}

func (d *dropRecorder) take() []*router.Retention {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := d.dropped
	d.dropped = nil
	return out
}

// A reload keeps the router.Retention of every route it leaves as it was,
// so its channels keep what they retain, and drops those of routes removed
// or changed: what cmd/kpush's publisher did before routes were compiled.
func TestSetRoutesKeepsRetentionOfUnchangedRoutes(t *testing.T) {
	d := &dropRecorder{}
	snapA := Route{Topic: "t", Channel: "a.{key}", Snapshot: true}
	histB := Route{Topic: "t", Channel: "b.{key}", History: History{MaxRecords: 5}}
	plainC := Route{Topic: "t", Channel: "c"}
	snapD := Route{Topic: "u", Channel: "d", Snapshot: true}
	c, err := New(Config{Brokers: []string{"127.0.0.1:1"}}, []Route{snapA, histB, plainC, snapD}, d, prometheus.NewRegistry(), nil)
	if err != nil {
		t.Fatal(err)
	}
	keepOf := func(topic, channel string) *router.Retention {
		for _, r := range c.table.Load().all {
			if r.Topic == topic && r.Channel == channel {
				return r.policy.Keep
			}
		}
		t.Fatalf("no route %s → %s in force", topic, channel)
		return nil
	}
	a0, b0, d0 := keepOf("t", "a.{key}"), keepOf("t", "b.{key}"), keepOf("u", "d")
	if a0 == nil || b0 == nil || d0 == nil || keepOf("t", "c") != nil {
		t.Fatal("routes with a snapshot or history must retain; the plain one must not")
	}

	// a unchanged (and moved), b's history changed, c format changed, d
	// removed, e added.
	histB2 := histB
	histB2.History.MaxRecords = 6
	plainC2 := plainC
	plainC2.Format = FormatBytes
	snapE := Route{Topic: "t", Channel: "e", Snapshot: true}
	if err := c.SetRoutes([]Route{histB2, plainC2, snapA, snapE}); err != nil {
		t.Fatal(err)
	}
	if got := keepOf("t", "a.{key}"); got != a0 {
		t.Error("an unchanged route got a new Retention: its channels would lose what they retain")
	}
	if got := keepOf("t", "b.{key}"); got == b0 || got == nil || got.HistoryRecords != 6 {
		t.Errorf("a changed route kept its old Retention %+v", got)
	}
	dropped := d.take()
	if len(dropped) != 2 || !slices.Contains(dropped, b0) || !slices.Contains(dropped, d0) {
		t.Errorf("dropped %v, want the changed route's and the removed route's Retentions (%p, %p)", dropped, b0, d0)
	}

	// Invalid routes change nothing and drop nothing.
	if err := c.SetRoutes([]Route{{Topic: "t", Channel: "{bad}"}}); err == nil {
		t.Fatal("invalid routes accepted")
	}
	if got := d.take(); len(got) != 0 || keepOf("t", "a.{key}") != a0 {
		t.Errorf("a rejected reload dropped %v", got)
	}

	// Two identical routes: each keeps a Retention of its own.
	if err := c.SetRoutes([]Route{snapA, snapA}); err != nil {
		t.Fatal(err)
	}
	all := c.table.Load().all
	if all[0].policy.Keep != a0 || all[1].policy.Keep == a0 || all[1].policy.Keep == nil {
		t.Errorf("identical routes share a Retention, or neither kept the old one")
	}
}

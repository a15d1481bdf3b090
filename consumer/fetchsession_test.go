package consumer

import (
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// An idle fetch group keeps a fetch session (KIP-227): after the first
// full request, its long polls are incremental and list one partition, not
// all 8; records still arrive. A broker that lost the session
// (FETCH_SESSION_ID_NOT_FOUND) gets a full request at once, and records
// keep arriving.
func TestFetchSessions(t *testing.T) {
	k := startFake(t, "t", 8)
	type seen struct {
		id, epoch int32
		listed    int
	}
	var mu sync.Mutex
	var reqs []seen
	failNext := false
	k.c.ControlKey(int16(kmsg.Fetch), func(req kmsg.Request) (kmsg.Response, error, bool) {
		k.c.KeepControl()
		r := req.(*kmsg.FetchRequest)
		n := 0
		for _, tp := range r.Topics {
			n += len(tp.Partitions)
		}
		mu.Lock()
		defer mu.Unlock()
		reqs = append(reqs, seen{r.SessionID, r.SessionEpoch, n})
		if failNext && r.SessionID != 0 {
			failNext = false
			res := kmsg.NewPtrFetchResponse()
			res.Version = r.Version
			res.ErrorCode = 70 // FETCH_SESSION_ID_NOT_FOUND
			return res, nil, true
		}
		return nil, nil, false
	})
	sink := &chanSink{got: make(chan string, 10)}
	c := runFastConsumer(t, k.c.ListenAddrs(), "", sink)
	waitUntil(t, 20*time.Second, "5 incremental fetches in a row listing at most one partition", func() bool {
		mu.Lock()
		defer mu.Unlock()
		run := 0
		for _, r := range reqs {
			if r.id != 0 && r.epoch > 0 && r.listed <= 1 {
				run++
			} else {
				run = 0
			}
		}
		return run >= 5
	})
	want := func(v string) {
		t.Helper()
		select {
		case got := <-sink.got:
			if got != v {
				t.Fatalf("delivered %q, want %q", got, v)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("%q was not delivered", v)
		}
	}
	k.produce(t, "t", "one") // partition 0 (manual partitioner)
	want("0:one")

	mu.Lock()
	failNext = true
	mark := len(reqs)
	mu.Unlock()
	waitUntil(t, 20*time.Second, "a full fetch after the broker lost the session", func() bool {
		mu.Lock()
		defer mu.Unlock()
		failed := false
		for _, r := range reqs[mark:] {
			if !failNext && r.id != 0 {
				failed = true
			}
			if failed && r.id == 0 && r.epoch == 0 && r.listed >= 1 {
				return true
			}
		}
		return false
	})
	if got := testutil.ToFloat64(c.m.fetchSessionResets); got != 1 {
		t.Fatalf("kpush_consumer_fetch_session_resets_total = %v, want 1", got)
	}
	k.produce(t, "t", "two")
	want("1:two")
}

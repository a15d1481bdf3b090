package router

import (
	"testing"
	"time"
)

// TestViewPosition: Newest is the most recent retained frame (the last, or
// the history's newest when only a history is kept) and Partitions tells a
// channel fed by one partition from one fed by several.
func TestViewPosition(t *testing.T) {
	view := func(r *Router, ch string) (newest *Frame, parts int) {
		s := &recSink{}
		defer r.Unsubscribe(s, ch)
		r.Subscribe(s, ch, func(v View) { newest, parts = v.Newest(), v.Partitions() })
		return newest, parts
	}
	hist := &Retention{HistoryRecords: 4, HistoryBytes: 1 << 20, HistoryAge: time.Minute}
	for _, tc := range []struct {
		name  string
		keep  *Retention
		parts []int32 // partition of each published frame, offsets 1, 2, ...
		off   int64   // the newest frame's offset; 0: none
		want  int
	}{
		{"nothing published", &Retention{Last: true}, nil, 0, 0},
		{"last, one partition", &Retention{Last: true}, []int32{3, 3, 3}, 3, 1},
		{"last, two partitions", &Retention{Last: true}, []int32{3, 1, 3}, 3, 2},
		{"history only, one partition", hist, []int32{0, 0}, 2, 1},
		{"history only, two partitions", hist, []int32{0, 2}, 2, 2},
		{"nothing retained", nil, []int32{0, 1}, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := New()
			for i, p := range tc.parts {
				r.Publish(&Frame{Channel: "c", Partition: p, Offset: int64(i + 1), Data: []byte("x")}, tc.keep)
			}
			newest, parts := view(r, "c")
			if parts != tc.want {
				t.Errorf("Partitions() = %d, want %d", parts, tc.want)
			}
			switch {
			case tc.off == 0 && newest != nil:
				t.Errorf("Newest() = offset %d, want nil", newest.Offset)
			case tc.off != 0 && (newest == nil || newest.Offset != tc.off):
				t.Errorf("Newest() = %+v, want offset %d", newest, tc.off)
			}
		})
	}
}

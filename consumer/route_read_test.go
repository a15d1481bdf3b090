package consumer

import (
	"errors"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/segmentio/kafka-go"
)

// failingBytes is a record value whose read fails part way, as a page of a
// fetch response that could not be read would.
type failingBytes struct{ n int }

func (f failingBytes) Len() int                   { return f.n }
func (f failingBytes) Read(p []byte) (int, error) { return 0, errors.New("page unreadable") }
func (f failingBytes) Close() error               { return nil }

var _ kafka.Bytes = failingBytes{}

func TestReadIntoReturnsReadErrors(t *testing.T) {
	if b, err := readInto(nil, nil); b != nil || err != nil {
		t.Fatalf("null value: %q, %v; want nil, nil", b, err)
	}
	b, err := readInto(make([]byte, 0, 8), failingBytes{n: 5})
	if err == nil {
		t.Fatal("a failed read returned no error")
	}
	if b == nil {
		t.Fatal("a failed read came back as a null value")
	}
	if b, err := readInto(nil, kafka.NewBytes([]byte("abc"))); err != nil || string(b) != "abc" {
		t.Fatalf("good value: %q, %v", b, err)
	}
}

func TestRecordWithUnreadableValueIsSkippedAndCounted(t *testing.T) {
	sink := &recordingSink{}
	r := newTestReader(t, []Route{{Topic: "t", Channel: "static", Format: FormatBytes}}, sink)
	bad := kr(7, "k", "")
	bad.Value = failingBytes{n: 5}
	r.router.route(&bad)
	good := kr(8, "k", "v")
	r.router.route(&good)
	if len(sink.msgs) != 1 || sink.msgs[0].Offset != 8 {
		t.Fatalf("delivered %+v, want only offset 8 (offset 7 could not be read)", sink.msgs)
	}
	if n := testutil.ToFloat64(r.c.m.skipped.WithLabelValues("read_error")); n != 1 {
		t.Fatalf(`kpush_consumer_records_skipped_total{reason="read_error"} = %v, want 1`, n)
	}
}

package consumer

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"

	"github.com/kpush/kpush/router"
	"github.com/segmentio/kafka-go"
)

// maxInterned bounds the channel names one recordRouter keeps interned.
const maxInterned = 4096

// recordRouter maps the records of one partition through its topic's routes
// and hands deliver a router.Record per route that gives a record a valid
// channel, carrying that route's compiled policy. It reuses its buffers
// from record to record, so routing a record allocates nothing: key and
// value are copied out of kafka-go's pooled pages into buffers it owns,
// channel names are interned, and the same Record is handed over each time
// (deliver must copy what it keeps). Not safe for
// concurrent use: each partition reader and each replay has its own.
type recordRouter struct {
	m       *metrics
	tp      topicPartition
	routes  []*compiledRoute
	deliver func(*router.Record)
	// only, when set, restricts delivery to that one channel; live says
	// whether skipped records are counted (a replay reads them again).
	only string
	live bool
	// epoch is stamped on every Record (router.Record.Epoch); the partition
	// reader replaces it whenever its read has a hole.
	epoch uint64
	// resetPending, while non-nil, holds the channels that have had a
	// record since the last reset: the first record of any other channel
	// is marked router.Record.Reset. It stops marking after maxInterned channels.
	resetPending map[string]bool

	key, value []byte
	chbuf      []byte
	channels   map[string]string // valid channel names rendered before
	headers    []kafka.Header    // of the record being routed; read by header
	fields     Fields
	rec        router.Record
}

func newRecordRouter(m *metrics, tp topicPartition, routes []*compiledRoute, deliver func(*router.Record)) *recordRouter {
	r := &recordRouter{
		m:        m,
		tp:       tp,
		routes:   routes,
		deliver:  deliver,
		live:     true,
		channels: make(map[string]string),
	}
	r.fields = Fields{Topic: tp.topic, Partition: int32(tp.partition), Header: r.header}
	return r
}

// route hands rec to deliver once per route whose channel it renders.
func (r *recordRouter) route(rec *kafka.Record) {
	var kerr, verr error
	r.key, kerr = readInto(r.key, rec.Key)
	r.value, verr = readInto(r.value, rec.Value)
	if kerr != nil || verr != nil {
		// A key or value that cannot be read is not a null one: skip
		// the record rather than deliver it without its bytes.
		r.skip(r.m.skipRead)
		return
	}
	r.headers = rec.Headers
	r.fields.Key = r.key
	jsonChecked, jsonOK := false, false
	for _, rt := range r.routes {
		var err error
		r.chbuf, err = rt.tmpl.Append(r.chbuf[:0], &r.fields)
		if err != nil {
			r.skip(r.m.skipTemplate)
			continue
		}
		if r.only != "" && string(r.chbuf) != r.only {
			continue
		}
		ch, ok := r.channel(r.chbuf)
		if !ok {
			r.skip(r.m.skipChannel)
			continue
		}
		if rt.Format == FormatJSON {
			if !jsonChecked {
				jsonChecked, jsonOK = true, json.Valid(r.value)
			}
			if !jsonOK {
				r.skip(r.m.skipJSON)
				continue
			}
		}
		r.rec = router.Record{
			Channel:   ch,
			Topic:     r.tp.topic,
			Partition: int32(r.tp.partition),
			Offset:    rec.Offset,
			Timestamp: rec.Time.UnixMilli(),
			Epoch:     r.epoch,
			Value:     r.value,
			Policy:    rt.policy,
		}
		if r.resetPending != nil && !r.resetPending[ch] {
			r.rec.Reset = true
			if r.resetPending[ch] = true; len(r.resetPending) >= maxInterned {
				r.resetPending = nil
			}
		}
		r.deliver(&r.rec)
	}
	r.headers = nil
}

// markReset marks the next record of every channel as the first after a
// reset.
func (r *recordRouter) markReset() {
	r.resetPending = make(map[string]bool)
}

func (r *recordRouter) skip(c interface{ Inc() }) {
	if r.live {
		c.Inc()
	}
}

// header is Fields.Header for the record being routed.
func (r *recordRouter) header(name string) ([]byte, bool) {
	for _, h := range r.headers {
		if h.Key == name {
			return h.Value, true
		}
	}
	return nil, false
}

// channel returns the interned name for b, or false if b is not a valid
// channel name. Most records map to a channel seen before, so this
// usually neither allocates nor re-validates.
func (r *recordRouter) channel(b []byte) (string, bool) {
	if ch, ok := r.channels[string(b)]; ok {
		return ch, true
	}
	ch := string(b)
	if !router.ValidChannel(ch) {
		return "", false
	}
	if len(r.channels) >= maxInterned {
		clear(r.channels)
	}
	r.channels[ch] = ch
	return ch, true
}

// readInto copies b into dst's storage; nil for a null b. A failed read
// is returned as an error, never as a null value.
func readInto(dst []byte, b kafka.Bytes) ([]byte, error) {
	if b == nil {
		return nil, nil
	}
	n := b.Len()
	dst = slices.Grow(dst[:0], n)[:n]
	if _, err := io.ReadFull(b, dst); err != nil {
		return dst[:0], fmt.Errorf("consumer: read %d record bytes: %w", n, err)
	}
	return dst, nil
}

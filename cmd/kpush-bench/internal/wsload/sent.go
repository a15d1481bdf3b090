package wsload

import "sync/atomic"

// SendTimes records when each record of a channel was produced, by the
// generator's per-channel "seq", so that a connection can time how long
// every record took to be superseded at the client: the time from a
// record's production to the client's receipt of that record or a newer
// one of its channel (the "newest value" latency). Under a frequency cap
// or conflation a skipped record is received, in that sense, when the
// newer record that replaced it arrives.
//
// One goroutine records (the producer); any number look up. Memory grows
// in chunks of 1,024 records per channel as they are produced.
type SendTimes struct {
	chans []atomic.Pointer[sendChunks]
}

const sendChunk = 1024

type sendChunks struct {
	chunks []*[sendChunk]atomic.Int64
}

// NewSendTimes makes a table for channels channels, indexed as in
// Config.Channels.
func NewSendTimes(channels int) *SendTimes {
	return &SendTimes{chans: make([]atomic.Pointer[sendChunks], channels)}
}

// Record notes that seq (from 1) of channel ch was produced at sentNanos.
// Only one goroutine may call it.
func (s *SendTimes) Record(ch int, seq, sentNanos int64) {
	if ch < 0 || ch >= len(s.chans) || seq < 0 {
		return
	}
	i := int(seq / sendChunk)
	cur := s.chans[ch].Load()
	if cur == nil || i >= len(cur.chunks) {
		next := &sendChunks{}
		if cur != nil {
			next.chunks = append(next.chunks, cur.chunks...)
		}
		for len(next.chunks) <= i {
			next.chunks = append(next.chunks, new([sendChunk]atomic.Int64))
		}
		s.chans[ch].Store(next)
		cur = next
	}
	cur.chunks[i][seq%sendChunk].Store(sentNanos)
}

// At returns when seq of channel ch was produced, 0 if unknown.
func (s *SendTimes) At(ch int32, seq int64) int64 {
	if s == nil || ch < 0 || int(ch) >= len(s.chans) || seq < 0 {
		return 0
	}
	cur := s.chans[ch].Load()
	i := int(seq / sendChunk)
	if cur == nil || i >= len(cur.chunks) {
		return 0
	}
	return cur.chunks[i][seq%sendChunk].Load()
}

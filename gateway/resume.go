package gateway

import (
	"context"

	"github.com/kpush/kpush/router"
)

// Replayer reads a channel's records back from Kafka for clients that resume
// from a position older than the in-memory history. cmd/kpush wires it to the
// consumer; the gateway knows nothing of Kafka.
//
// The gateway calls Replay from its own bounded pool of goroutines, never
// from a connection worker, and may call it concurrently. Replay must return
// soon after ctx ends.
type Replayer interface {
	// Replay calls emit, in offset order, with every record of channel ch
	// in partition p whose offset is above after, up to the end of the
	// partition as it was when Replay started. It stops early when emit
	// returns false. complete reports whether every such record was
	// emitted; it is false when records were deleted from Kafka, a replay
	// limit was reached, emit stopped it, or the records cannot be found
	// (no route or more than one topic produces ch).
	Replay(ctx context.Context, ch string, p int32, after int64, emit func(*router.Record) bool) (complete bool, err error)
}

// Package consumer reads the routed Kafka topics and hands every record,
// mapped to its channel, to a Destination (the router) as a router.Record
// carrying its route's compiled router.Policy.
//
// Routes are compiled once, when they are set (New, SetRoutes;
// CompileRoutes): defaults filled in a copy (the caller's routes are never
// modified), the channel template parsed, and one router.Policy built per
// route: format, slow-consumer policy, max_rate, public, and what the
// router retains of its channels (a router.Retention). Every record of the
// route carries a pointer to that policy to the router, and so to the
// gateway's encoder; nothing on the record path looks at a Route again,
// and a record read under the old routes keeps the policy it was read
// under. A reload hands a route that stays as it was (same topic, channel
// template and retention keys) the same router.Retention, so its channels
// keep their snapshots and histories, and has the router drop the retained
// state of routes removed or changed (compile.go).
//
// Every kpush instance must see every record, because a client subscribed to
// any channel may be connected to any instance. So the consumer uses no
// consumer group: it reads every partition of every routed topic itself, one
// goroutine per partition, and tracks offsets in memory. The readers of the
// partitions one broker leads hand their fetches to that broker's fetch
// group, which sends them as one Fetch request in a fetch session (KIP-227:
// after a full request, only changed partitions are listed; see
// fetchGroup). It follows
// topics created and partitions added after it starts (polling metadata
// every kafka.metadata_interval) and reads those from their first offset.
//
// A partition reader delivers records strictly in offset order and advances
// its position only past records it has handed to the Destination, so after a broker
// failure it retries with backoff from exactly the next undelivered offset:
// nothing is skipped or repeated. It fetches with the configured isolation
// level (read_committed by default: records of aborted transactions are
// stepped over using each fetch's aborted-transaction list, and nothing past
// the last stable offset is read); control records (the commit and abort
// markers of transactional producers) are never delivered. A log that goes
// back under a reader (topic recreated, log truncated, or diverged under a
// new leader: after a leadership change the reader asks the leader, with
// OffsetForLeaderEpoch, where the leader epoch of the last batch it
// delivered ends) is a reset: counted, logged, a new continuity epoch, the
// next record of each channel marked Reset, and Replay refuses positions
// from before it.
//
// While a partition cannot be read, Ready is false, its state shows in
// kpush_consumer_partitions{state} and Status, and
// kpush_consumer_errors_total rises; none of that is readiness, which only
// waits for start-up (Started). Stalled reports readers that stopped
// turning, a fault of the process rather than of Kafka.
//
// Metadata is requested for the routed topics only.
//
// Replay reads one partition back from a given offset for clients that
// resume from a position older than the gateway's in-memory history; it
// uses the same routes to keep only the records of the asked channel, is
// bounded by kafka.replay_max_scanned, and is independent of the live
// readers.
//
// SetRoutes replaces the routes while the consumer runs (a configuration
// reload): readers of newly routed topics start, readers of topics no longer
// routed stop, and the others use the new routes from their next fetch.
//
// Public answers, from the routes in force, which channels anonymous
// clients may subscribe to (the gateway's PublicChannels).
//
// Place in kpush: the start of the record's path (consumer → router →
// gateway). Of kpush it imports only router, for the record type
// (router.Record, router.Policy, router.Retention) and the channel name
// rule (router.ValidChannel); cmd/kpush wires the router in as its
// Destination.
//
// Concurrency: Run owns every goroutine it starts and returns after they
// stop (kafka-go's transport goroutines end when Run returns); SetRoutes,
// Public and Replay are safe to call while it runs. Destination.Deliver is
// called concurrently from partition goroutines (but in order within a
// partition) and must not block; the Record it gets is reused for the
// partition's next record, so routing a record allocates nothing.
// Destination.DropRetention is called by SetRoutes, one call at a time.
package consumer

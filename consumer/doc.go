// Package consumer reads the routed Kafka topics and hands every record,
// mapped to its channel, to a Sink.
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
// its position only past records it has handed to the Sink, so after a broker
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
// Place in kpush: the start of the record's path (consumer → router →
// gateway). Of kpush it imports only router, for the channel name rule
// (router.ValidChannel); cmd/kpush wires its Sink to the gateway's Publish.
//
// Concurrency: Run owns every goroutine it starts and returns after they
// stop (kafka-go's transport goroutines end when Run returns); SetRoutes and
// Replay are safe to call while it runs. Sink.Deliver is called concurrently
// from partition goroutines (but in order within a partition) and must not
// block; the Message it gets is reused for the partition's next record, so
// routing a record allocates nothing.
package consumer

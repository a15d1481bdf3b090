// Package router maps channel names to the sinks subscribed to them and fans
// each published frame out to every subscriber.
//
// Records come from the consumer as a Record (Deliver), each carrying its
// route's compiled Policy: format, slow-consumer policy, max_rate, public,
// and what to retain (Keep, a Retention). The router asks its Encoder (the
// gateway, set once with SetEncoder) to turn a record into a Frame at most
// once, and only when the channel has a subscriber or the route retains
// something (PublishRecord says why, with a benchmark's figure). The same
// *Frame then goes to every subscriber of the channel without copying, so
// a delivery costs one interface call and no allocation. Publish takes a
// Frame encoded beforehand.
//
// The index is split into shards picked by a hash of the channel name. Each
// shard is a sync.RWMutex plus a map; Publish runs under the shard's read lock,
// Subscribe and Unsubscribe under its write lock, so traffic on channels in
// different shards never contends. Because a subscribe holds the write lock
// while it captures the channel's last frame, a snapshot and the live stream
// that follows it never overlap or leave a gap.
//
// Per route (a Retention), the router keeps each channel's last frame and a
// bounded history of recent frames (by count, bytes and age), both in the
// channel's entry under the same shard lock, so a resuming subscriber can be
// handed exactly the frames after its position and then the live stream.
// Publishing to a channel that retains anything takes the write lock. A
// history answers "complete" only across frames of one continuity epoch
// (Frame.Epoch) with offsets going up; what is retained is bounded by age,
// by route (DropRetention) and by a byte budget with least-recently-used
// eviction (Config, retain.go). Trim and DropRetention hold a shard's lock
// for a batch of channels at a time, never across the whole shard.
//
// The router keeps no reverse index: the sink (a gateway connection) knows the
// channels it subscribed to and passes them to Unsubscribe when it closes.
//
// Place in kpush: the middle of the record's path (consumer → router →
// gateway). The router imports neither the gateway nor the consumer
// (cmd/kpush's TestPackageDependencies checks it): the consumer reaches it
// as its Destination, the gateway as its Encoder and, for each connection,
// as a Sink.
//
// All methods are safe for concurrent use, except SetEncoder, called once
// before the first Deliver. Sink.Enqueue and Encoder.Encode are called
// with a shard lock held and must never block.
package router

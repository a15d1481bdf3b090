// Package wsload holds many kpush WebSocket client connections in one
// process cheaply enough that the generator is not what a benchmark
// measures.
//
// A Pool runs a few event loops (one per CPU by default). Each loop owns an
// epoll instance and the connections it dialed: it connects non-blocking
// sockets, writes the HTTP upgrade, subscribes, then reads server frames,
// answers pings and measures every msg frame, all on raw descriptors with
// no goroutine and no buffer per connection (a connection carries bytes
// only while a frame is split across reads). Source addresses are spread
// over 127.0.0.1, 127.0.0.2, ... so ephemeral ports never run short; the
// whole 127.0.0.0/8 is local.
//
// For every msg frame a loop records the latency from the send time the
// producer embedded in the record value ({"seq":N,"t":UNIX_NANOS,...}), or,
// for other feeds, from the record's Kafka timestamp (the frame's "ts", in
// milliseconds), to the moment the read returned. It tracks, per
// connection and channel, the last partition, offset and "seq" seen, and
// counts duplicates (an offset not above the last one of the same
// partition) and gaps (a "seq" that skips).
//
// Connections speak kpush's protocol v1 by default, or (Config.Protocol)
// Centrifugo's JSON client protocol (connect, then one subscribe command
// per channel; publications arrive as pushes) or Server-Sent Events (a GET
// naming the channels; records arrive as events). With Config.Sent a loop
// also records the newest-value latency: from each record's production to
// the client's receipt of it or of a newer record of its channel, so that
// records a frequency cap replaced count when their replacement arrives.
//
// Frames are parsed and built with package gateway/wire, the codec the
// gateway itself uses; this package reads the protocols' payloads
// (frames.go), keeps production times (sent.go) and runs the loops
// (loop_linux.go, pool_linux.go).
//
// Concurrency: Pool methods are called from one controlling goroutine;
// Stats, Latency and HandshakeLatency are safe from any goroutine. Loops
// take commands through a locked queue and an eventfd wake-up, and share
// nothing else but atomic counters.
package wsload

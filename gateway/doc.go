// Package gateway is kpush's WebSocket connection layer and client protocol.
//
// Where things are. The transport (epoll, descriptors, the registry, the
// worker queue, the TLS bridge) is package gateway/internal/netpoll; the
// frame codec and protocol v1's types are package gateway/wire. This
// package builds connections and sessions on them. A connection has two
// halves: its session, the same on every system and unit-tested without a
// socket, and its transport, Linux-only.
//
// The session half (portable; tests drive it through a fake transport):
//   - session.go: the session type (subscriptions, grant, outbound queue,
//     closing) and the transport interface it reaches its connection
//     through; delivering records, replies and the close frame;
//   - requests.go: a request and its reply: subscribe (with since or
//     snapshot), unsubscribe;
//   - security.go: the request rate, grants and authorization, refresh;
//   - resume_seam.go: resumes from a position, from the router's history or
//     read back from Kafka by the resume pool (the seam is described at its
//     top); resume.go: the Replayer it reads through;
//   - outbound.go, capped.go: a connection's queue of frames, its bounds,
//     the slow-consumer policy (conflation), frequency caps and the resume
//     seam's per-channel state;
//   - protocol.go: request parsing, replies, EncodeRecord (a router.Record
//     encoded once as a complete frame);
//   - server.go, metrics.go: the Server's sessions' half (configuration,
//     limits, verifier, resume queue, Encode, the router's Encoder, and
//     Publish) and the metrics;
//   - centrifugo_session.go: Centrifugo's client protocol as a session:
//     its commands (connect, subscribe with recover and delta,
//     unsubscribe, refresh), its per-connection state (cfSession) and the
//     flush-time rewriting of queued frames into its form (cfFrameLocked);
//     centrifugo.go, centrifugo_proto.go: its wire forms (JSON, Protobuf)
//     and the pushes shared by every subscriber (cfPushCache);
//   - sse.go: event streams' encoding and positions (sseStream), and the
//     subscribe of a new stream (sseSubscribe).
//
// The transport half (the _linux.go files; the parsers they use are
// portable and tested on any system):
//   - handshake.go, clientaddr*.go, proxyproto.go, security_linux.go: the
//     upgrade, its checks (origin, token, slots) and the real client
//     address;
//   - conn_linux.go, tls_linux.go: conn, a session with its descriptor:
//     reading frames and flushing the queue; closing, half-closing
//     (shutWrite) and releasing it;
//   - server_linux.go: the Server's transport half (netState), its
//     listener, workers, ticker and drain;
//   - sse_linux.go: an event stream's request, checks and takeover of the
//     socket, and its flush-time rewriting (sseFrameLocked, which touches
//     the transport: a heartbeat written counts as the client's activity,
//     and a stream whose position outgrows an id is cut with the close
//     grace); centrifugo_linux.go: the upgrade's path check and the close
//     code of an expired token. A record's Centrifugo pushes (JSON,
//     Protobuf, fossil delta) and its event for one-channel streams are
//     made once per record and shared by every subscriber, as protocol
//     v1's frame is (cfPushCache).
//
// Every Linux-only file is named _linux.go and carries no build tag; on
// other systems New returns an error (server_other.go).
//
// Connections are accepted on a TCP listener and upgraded with gobwas/ws's
// zero-copy upgrader; plain HTTP requests to other paths go to an optional
// http.Handler (the demo page). Once upgraded, on Linux, a connection leaves
// Go's net package: its socket becomes a bare non-blocking descriptor in
// kpush's own epoll set, so an idle connection holds no goroutine and no
// buffer, only its small conn struct.
//
// Concurrency:
//   - One goroutine per epoll instance waits for readiness (one for reads,
//     one for writes that hit a full socket buffer) and hands the
//     connection to a bounded worker pool; it never reads or writes itself.
//   - Workers read and parse frames, answer requests, and flush queued
//     frames with one writev per round. A connection is read by at most one
//     worker at a time (one-shot epoll arming) and flushed by at most one.
//     Flushes are served ahead of reads (netpoll.WorkQueue), so frames
//     for open connections never wait behind a burst of closing ones. A failed epoll
//     re-arm drops the connection through the normal close path; a failed
//     epoll_wait is fatal (Server.Err, and Serve returns it). The system
//     calls on kpush's own descriptors go through netpoll.Sys, which tests
//     replace to inject faults.
//   - A connection's session mu guards its outbound queue, subscriptions
//     and flags. The session calls its transport's Locked methods (wake the
//     writer, arm the timer, closing) with mu held; they never block or
//     take a router lock, so a record can be queued from inside the
//     router's fan-out.
//   - Publishing (the router's fan-out, with each record encoded once by
//     Server.Encode, and compressed at most once, by the first connection
//     with permessage-deflate that takes it, in its Enqueue before it
//     locks: deflate.go) only appends to
//     per-connection queues, which are bounded in bytes and messages; when a
//     record does not fit, its route's policy applies (outbound.go): close
//     with 4008, or conflate to the newest pending record per channel.
//   - A subscribe with since resumes from Kafka positions (resume_seam.go,
//     which explains the seam): from the router's per-channel history under
//     its lock, or else read back from Kafka through the Replayer by a
//     bounded pool of resume_concurrency goroutines, while the channel's
//     live frames are held for the connection.
//   - One ticker drives pings, idle timeouts and stuck closes for all
//     connections. It walks them in batches copied out of the registry, so
//     it never holds the registry lock across every connection.
//
// Security (README.md, "Security"): with TLS configured, the TLS handshake
// and the upgrade run in the handshake goroutine and the connection is then
// detached like a plain one, crypto/tls reading and writing through a
// non-blocking adapter (netpoll.TLSLink), so an idle wss connection holds no
// goroutine either. Tokens are verified at the upgrade (package auth) and
// subscriptions checked against their grants; expiry is enforced by the
// same ticker. Limits on hostile clients answer with an HTTP status before
// the upgrade or a close code after it, each counted in kpush_rejected_total.
//
// Server.Run serves until its context ends; Server.Shutdown drains: it stops
// accepting and closes connections with 1001 spread over drain_timeout.
// Server.SetLimits replaces the live-changeable limits (Limits) while it
// serves; connection code reads them through one atomic pointer.
package gateway

// Package netpoll is kpush's transport: the Linux epoll machinery that
// serves upgraded WebSocket connections as bare non-blocking descriptors,
// so an idle connection holds no goroutine and no buffer. It knows nothing
// of channels, JSON, Kafka or the WebSocket protocol; package gateway
// builds connections, sessions and policy on top of it.
//
// What it owns, one file each:
//   - poller_linux.go: Poller, one epoll instance with one-shot interest
//     and a generation number carried in each event; Sys, the system calls
//     on kpush's own descriptors (epoll, dup), which tests replace to
//     inject faults.
//   - fdio_linux.go: descriptor I/O (Detach takes a socket over from Go's
//     net package; Read, Writev, Close).
//   - registry.go: Registry, descriptors to connections under generation
//     numbers, so an event for a closed descriptor whose number was reused
//     is recognised as stale.
//   - queue.go: WorkQueue, the worker pool's queue (flushes ahead of reads,
//     a quarter of each batch kept for reads).
//   - tlslink_linux.go: TLSLink, the bridge that lets crypto/tls run over
//     a non-blocking descriptor without a goroutine.
//
// It is the only Linux-specific code below the gateway's connection layer:
// every Linux-only file is named _linux.go and carries no build tag.
//
// Concurrency: Registry and WorkQueue are safe for concurrent use and never
// block their callers beyond a short lock (WorkQueue.PopBatch waits for
// work by design). A Poller's Wait runs in one goroutine, the owner's; Add,
// Rearm and Remove may be called from any goroutine. A TLSLink is read by
// one goroutine at a time and written under its own lock. Nothing here
// starts a goroutine.
package netpoll

// Package target is the kpush under test, seen from the load generator: a
// kpush process the generator starts from a built binary, or one already
// running that it attaches to by URL. Either way the generator reads
// kpush's own admin /metrics, so CPU seconds, RSS and goroutines are
// kpush's and not the generator's.
//
// Start runs the binary with a generated configuration on random loopback
// ports, learns the ports from kpush's "kpush running" log line and waits
// for /readyz. Scrape parses the Prometheus text format for the handful of
// series the benchmark reports. GC asks kpush for a heap profile with gc=1,
// which runs a full collection first (net/http/pprof's documented
// behaviour), so memory can be read after a collection without changing
// kpush.
//
// A Proc is used by one goroutine; Scrape and GC are safe from any.
package target

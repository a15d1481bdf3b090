package wsload

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/kpush/kpush/cmd/kpush-bench/internal/hist"
	"golang.org/x/sys/unix"
)

// Config describes the connections a Pool opens.
type Config struct {
	// URL is kpush's WebSocket URL, ws://host:port/path. host must be an
	// IPv4 address.
	URL string
	// Channels are every channel a connection may subscribe to; Open names
	// them by index.
	Channels []string
	// Loops is the number of event loops; 0 means GOMAXPROCS.
	Loops int
	// SourceAddrs spreads connections over 127.0.0.1 ... 127.0.0.N when the
	// target is on loopback; 0 means one address per 20,000 connections
	// opened at once, at least 4, and enough that no address has more than
	// 16 handshakes in flight: kpush gives one address at most an eighth of
	// gateway.max_handshakes (128 of the default 1024) once half of them are
	// in use, and closes what is over, as a storm from real clients on many
	// addresses would never see. kpush counts a handshake until its
	// goroutine has registered the connection, which on a loaded machine
	// can be long after the client saw the 101 and dialed the next one, so
	// the client's own count needs a wide margin under kpush's share (1,024
	// in flight from 4 addresses had 65-343 of 2,000 refused).
	SourceAddrs int
	// MaxInFlight bounds connections that are connecting, upgrading or
	// waiting for their subscribe reply, over all loops; 0 means 256.
	MaxInFlight int
	// HandshakeTimeout fails a connection not subscribed (or upgraded, if it
	// subscribes to nothing) within it; 0 means 10s.
	HandshakeTimeout time.Duration
	// Deflate offers permessage-deflate (as browsers do); compressed frames
	// (RSV1) are inflated before they are checked. kpush accepts it only
	// with no context takeover, so each message inflates on its own.
	Deflate bool
	// Protocol is what the connections speak: ProtoV1 (default, kpush's own
	// protocol on URL's path), ProtoCentrifugo (Centrifugo's JSON client
	// protocol: a connect command, then one subscribe command per channel;
	// URL's path must be gateway.centrifugo_path) or ProtoSSE (a
	// text/event-stream GET of URL's path with one channel= parameter per
	// channel; URL's path must be gateway.sse_path).
	Protocol string
	// Sent, when set, holds the production time of every record by
	// channel index and "seq"; each loop then also records the newest-value
	// latency (Pool.NewestLatency).
	Sent *SendTimes
}

func deflateOffer(on bool) string {
	if !on {
		return ""
	}
	return "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
}

// The protocols a Pool speaks (Config.Protocol).
const (
	ProtoV1         = "v1"
	ProtoCentrifugo = "centrifugo"
	ProtoSSE        = "sse"
)

type proto uint8

const (
	protoV1 proto = iota
	protoCF
	protoSSE
)

// maxInFlightPerAddr is the most handshakes the default spread of source
// addresses (Config.SourceAddrs) puts in flight from one address.
const maxInFlightPerAddr = 16

// Pool is a set of client connections served by event loops.
type Pool struct {
	cfg       Config
	dst       unix.SockaddrInet4
	loopback  bool
	proto     proto
	path      string           // URL's path and query
	host      string           // URL's host:port
	request   []byte           // the HTTP upgrade request (WebSocket protocols)
	chanIndex map[string]int32 // read-only after New
	loops     []*loop
	nextID    int32
	unapplied atomic.Int64 // commands sent but not yet applied by their loop
	wg        sync.WaitGroup
	closed    bool
}

// New starts the event loops; it opens no connection.
func New(cfg Config) (*Pool, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil || u.Scheme != "ws" {
		return nil, fmt.Errorf("wsload: URL %q must be ws://host:port/path", cfg.URL)
	}
	host, portStr, err := net.SplitHostPort(u.Host)
	if err != nil {
		return nil, fmt.Errorf("wsload: URL %q: %w", cfg.URL, err)
	}
	ip := net.ParseIP(host).To4()
	port, perr := strconv.Atoi(portStr)
	if ip == nil || perr != nil {
		return nil, fmt.Errorf("wsload: URL %q must name an IPv4 address and port", cfg.URL)
	}
	if cfg.Loops <= 0 {
		cfg.Loops = runtime.GOMAXPROCS(0)
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = 256
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 10 * time.Second
	}
	path := u.RequestURI()
	p := &Pool{cfg: cfg, loopback: ip[0] == 127, chanIndex: make(map[string]int32, len(cfg.Channels)), path: path, host: u.Host}
	switch cfg.Protocol {
	case "", ProtoV1:
	case ProtoCentrifugo:
		p.proto = protoCF
	case ProtoSSE:
		p.proto = protoSSE
	default:
		return nil, fmt.Errorf("wsload: protocol %q is not %s, %s or %s", cfg.Protocol, ProtoV1, ProtoCentrifugo, ProtoSSE)
	}
	p.dst.Port = port
	copy(p.dst.Addr[:], ip)
	for i, ch := range cfg.Channels {
		p.chanIndex[ch] = int32(i)
	}
	p.request = []byte("GET " + path + " HTTP/1.1\r\nHost: " + u.Host +
		"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + wsKey +
		"\r\nSec-WebSocket-Version: 13\r\nUser-Agent: kpush-bench\r\n" + deflateOffer(cfg.Deflate) + "\r\n")
	for i := 0; i < cfg.Loops; i++ {
		l, err := newLoop(p, i, max(1, cfg.MaxInFlight/cfg.Loops))
		if err != nil {
			p.Close()
			return nil, err
		}
		p.loops = append(p.loops, l)
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			l.run()
		}()
	}
	return p, nil
}

// Open dials n more connections, spread over the loops; subs(i) gives the
// channel indexes the i-th of them subscribes to (none: it only upgrades).
// It returns at once; use WaitReady or Stats to follow progress.
func (p *Pool) Open(n int, subs func(i int) []int32) {
	perLoop := make([][]*wconn, len(p.loops))
	srcs := sourceAddrs(p.cfg, int(p.nextID)+n)
	for i := 0; i < n; i++ {
		id := p.nextID
		p.nextID++
		c := &wconn{id: id, fd: -1}
		if p.loopback {
			c.src = byte(1 + int(id)%srcs)
		}
		if subs != nil {
			for _, ch := range subs(i) {
				c.subs = append(c.subs, subState{ch: ch})
			}
		}
		l := int(id) % len(p.loops)
		perLoop[l] = append(perLoop[l], c)
	}
	for i, l := range p.loops {
		if len(perLoop[i]) > 0 {
			l.send(command{kind: cmdDial, conns: perLoop[i]})
		}
	}
}

// sourceAddrs is how many loopback source addresses connections are
// spread over when total have been asked for (Config.SourceAddrs).
func sourceAddrs(cfg Config, total int) int {
	if cfg.SourceAddrs > 0 {
		return min(cfg.SourceAddrs, 254)
	}
	return min(max(4, total/20000+1, (cfg.MaxInFlight+maxInFlightPerAddr-1)/maxInFlightPerAddr), 254)
}

// Opened is how many connections Open has been asked for in all.
func (p *Pool) Opened() int { return int(p.nextID) }

// Drop cuts every open connection with a TCP reset, as a network failure
// would, and, if reconnect is set, dials each again with the same
// subscriptions.
func (p *Pool) Drop(reconnect bool) {
	for _, l := range p.loops {
		l.send(command{kind: cmdDrop, reconnect: reconnect})
	}
}

// Revive dials again every connection that is not open (closed by the
// server, failed, or dropped), keeping its subscriptions.
func (p *Pool) Revive() {
	for _, l := range p.loops {
		l.send(command{kind: cmdRevive})
	}
}

// WaitReady waits until want connections are ready (subscribed, or
// upgraded if they subscribe to nothing) or ctx ends. It gives up early
// when every connection asked for has either become ready or failed.
func (p *Pool) WaitReady(ctx context.Context, want int) error {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for {
		// Read unapplied first: once it is 0, every command's effect on
		// the queued and in-flight counts is visible to Stats.
		settled := p.unapplied.Load() == 0
		s := p.Stats()
		if s.Ready >= int64(want) {
			return nil
		}
		if settled && s.InFlight == 0 && s.Queued == 0 {
			return fmt.Errorf("wsload: %d of %d connections ready and none pending; failures: %v", s.Ready, want, s.Failures)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wsload: %d of %d connections ready: %w (failures: %v)", s.Ready, want, ctx.Err(), s.Failures)
		case <-t.C:
		}
	}
}

// Close resets every connection and stops the loops. Safe to call twice.
func (p *Pool) Close() {
	if p.closed {
		return
	}
	p.closed = true
	for _, l := range p.loops {
		l.send(command{kind: cmdStop})
	}
	p.wg.Wait()
	for _, l := range p.loops {
		l.epFile.Close()
		unix.Close(l.evfd)
	}
}

// Stats are the pool's counts, summed over its loops.
type Stats struct {
	Queued     int64            `json:"-"`                     // waiting to be dialed
	InFlight   int64            `json:"-"`                     // connecting, upgrading or subscribing
	Open       int64            `json:"open"`                  // upgraded and not closed
	Ready      int64            `json:"ready"`                 // subscribed (or upgraded, if no channels) and not closed
	Upgraded   int64            `json:"upgraded"`              // upgrades completed, cumulative
	Subscribed int64            `json:"subscribed"`            // subscribe replies received, cumulative
	Failed     int64            `json:"failed"`                // connections that failed to connect, upgrade or subscribe
	Closed     int64            `json:"closed"`                // closed by the server with a close frame
	Lost       int64            `json:"lost"`                  // ended by EOF or a socket error without a close frame
	Deliveries int64            `json:"deliveries"`            // msg frames received
	Skipped    int64            `json:"skipped"`               // records the received frames report as skipped (caps, conflation)
	Snapshots  int64            `json:"snapshots"`             // of which snapshot frames
	Dups       int64            `json:"duplicates"`            // msg frames at or below the last offset of their channel and partition
	Gaps       int64            `json:"gaps"`                  // records missing between consecutive "seq" values of a channel
	Unknown    int64            `json:"unknown"`               // msg frames for a channel the connection did not subscribe to
	Errors     int64            `json:"errors"`                // error replies
	Pings      int64            `json:"pings"`                 // server pings answered
	Bytes      int64            `json:"bytes"`                 // bytes read
	LastReady  int64            `json:"-"`                     // Unix nanos when a connection last became ready
	Failures   map[string]int64 `json:"failures,omitempty"`    // failure counts by reason
	CloseCodes map[int]int64    `json:"close_codes,omitempty"` // server close frames by code
}

// Stats returns the current counts.
func (p *Pool) Stats() Stats {
	var s Stats
	s.Failures = map[string]int64{}
	s.CloseCodes = map[int]int64{}
	for _, l := range p.loops {
		c := &l.stats
		s.Queued += c.queued.Load()
		s.InFlight += c.inFlight.Load()
		s.Open += c.open.Load()
		s.Ready += c.ready.Load()
		s.Upgraded += c.upgraded.Load()
		s.Subscribed += c.subscribed.Load()
		s.Failed += c.failed.Load()
		s.Closed += c.closed.Load()
		s.Lost += c.lost.Load()
		s.Deliveries += c.deliveries.Load()
		s.Skipped += c.skipped.Load()
		s.Snapshots += c.snapshots.Load()
		s.Dups += c.dups.Load()
		s.Gaps += c.gaps.Load()
		s.Unknown += c.unknown.Load()
		s.Errors += c.errors.Load()
		s.Pings += c.pings.Load()
		s.Bytes += c.bytes.Load()
		s.LastReady = max(s.LastReady, c.lastReady.Load())
		l.reasonMu.Lock()
		for k, v := range l.failures {
			s.Failures[k] += v
		}
		for k, v := range l.closeCodes {
			s.CloseCodes[k] += v
		}
		l.reasonMu.Unlock()
	}
	return s
}

// Latency is the delivery latency of every msg frame so far.
func (p *Pool) Latency() *hist.Snapshot {
	s := &hist.Snapshot{}
	for _, l := range p.loops {
		s.Add(l.latency.Snapshot())
	}
	return s
}

// NewestLatency is, for every record produced on a subscribed channel
// (Config.Sent), the time from its production to the client's receipt of
// it or of a newer record of its channel (what a trading screen shows),
// over every connection; a record that a cap or conflation skipped counts
// when the record that replaced it arrives. Without caps it equals
// Latency. Empty without Config.Sent.
func (p *Pool) NewestLatency() *hist.Snapshot {
	s := &hist.Snapshot{}
	for _, l := range p.loops {
		s.Add(l.newest.Snapshot())
	}
	return s
}

// HandshakeLatency is the time from starting to connect to the upgrade
// response, for every upgraded connection so far.
func (p *Pool) HandshakeLatency() *hist.Snapshot {
	s := &hist.Snapshot{}
	for _, l := range p.loops {
		s.Add(l.handshake.Snapshot())
	}
	return s
}

type cmdKind uint8

const (
	cmdDial cmdKind = iota + 1
	cmdDrop
	cmdRevive
	cmdStop
)

type command struct {
	kind      cmdKind
	conns     []*wconn
	reconnect bool
}

// loopStats are one loop's counters; written by the loop, read by Stats.
type loopStats struct {
	queued, inFlight, open, ready                      atomic.Int64
	upgraded, subscribed, failed, closed, lost         atomic.Int64
	deliveries, snapshots, dups, gaps, unknown, errors atomic.Int64
	skipped                                            atomic.Int64
	pings, bytes, lastReady                            atomic.Int64
	_                                                  [64]byte
}

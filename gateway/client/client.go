package client

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sort"
	"strconv"
	"sync"
	"time"
)

// Client is a protocol v1 client that stays connected: it reconnects with
// exponential backoff and full jitter, and resumes every channel from the
// last Kafka position it saw, so the application sees each record once, in
// order per (channel, partition), across reconnects and across kpush
// instances.
//
// Resume: for every channel the client keeps the highest offset seen per
// partition (snapshot records included). On each connection it subscribes
// every channel with its own request: with "since" set to those positions
// when it has some, otherwise with "snapshot" when Options.Snapshot is set.
// A message at or below the last offset seen for its channel and partition
// is a duplicate and is dropped. The server's verdict arrives through
// OnRecovered: false means records were lost and the channel should be
// resynchronised.
//
// Run owns the connection; the callbacks are called from Run's goroutine, one
// at a time, and should return quickly (they hold up reading). Subscribe,
// Positions, Stats and Drop are safe to call from any goroutine.
type Client struct {
	opts Options

	mu        sync.Mutex                 // guards the fields below
	channels  []string                   // channels to keep subscribed, in order added
	positions map[string]map[int32]int64 // channel → partition → highest offset seen
	conn      *Conn                      // current connection, nil between them
	stats     Stats
}

// Options configure a Client. URLs is required; the rest have defaults.
type Options struct {
	// URLs are kpush WebSocket URLs. The client stays on one while it
	// works and moves to the next after a failed or lost connection.
	URLs []string
	Dial *DialOptions
	// MinBackoff and MaxBackoff bound the reconnect delay: the n-th retry
	// waits a uniformly random time in [0, min(MaxBackoff, MinBackoff*2^n)]
	// (250ms and 10s). The count resets once a connection has stayed up for
	// StableAfter (5s).
	MinBackoff  time.Duration
	MaxBackoff  time.Duration
	StableAfter time.Duration
	// Snapshot asks for the last record of channels subscribed without a
	// position yet.
	Snapshot bool

	// OnMessage receives every msg frame that is not a duplicate.
	OnMessage func(*Frame)
	// OnRecovered receives the server's verdict for each resumed channel.
	OnRecovered func(channel string, recovered bool)
	// OnError receives error frames from the server.
	OnError func(*Frame)
	// OnConnect is called when a connection is up, before the channels are
	// subscribed again; OnDisconnect when it is lost, with the reason.
	OnConnect    func(url string)
	OnDisconnect func(err error)
}

// Stats count what a Client did.
type Stats struct {
	Messages   int64 // msg frames handed to OnMessage
	Duplicates int64 // msg frames dropped as already seen
	Connects   int64 // connections made
}

// NewClient returns a Client; call Run to connect.
func NewClient(o Options) (*Client, error) {
	if len(o.URLs) == 0 {
		return nil, errors.New("client: no URL to connect to")
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = 250 * time.Millisecond
	}
	if o.MaxBackoff < o.MinBackoff {
		o.MaxBackoff = max(o.MinBackoff, 10*time.Second)
	}
	if o.StableAfter <= 0 {
		o.StableAfter = 5 * time.Second
	}
	return &Client{opts: o, positions: make(map[string]map[int32]int64)}, nil
}

// Subscribe adds channels. When connected they are subscribed at once (with
// their positions, if any); otherwise on the next connection.
func (c *Client) Subscribe(channels ...string) error {
	c.mu.Lock()
	var added []string
	for _, ch := range channels {
		if !contains(c.channels, ch) {
			c.channels = append(c.channels, ch)
			added = append(added, ch)
		}
	}
	conn := c.conn
	c.mu.Unlock()
	if conn == nil {
		return nil
	}
	for _, ch := range added {
		if err := c.subscribeOn(conn, ch); err != nil {
			return err
		}
	}
	return nil
}

// SetPositions sets the positions the client resumes from, e.g. ones saved
// by an earlier process; later messages move them forward.
func (c *Client) SetPositions(pos map[string]map[int32]int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for ch, parts := range pos {
		m := make(map[int32]int64, len(parts))
		for p, o := range parts {
			m[p] = o
		}
		c.positions[ch] = m
	}
}

// Positions returns a copy of the highest offset seen per channel and
// partition.
func (c *Client) Positions() map[string]map[int32]int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]map[int32]int64, len(c.positions))
	for ch, parts := range c.positions {
		m := make(map[int32]int64, len(parts))
		for p, o := range parts {
			m[p] = o
		}
		out[ch] = m
	}
	return out
}

// Stats returns the running counts.
func (c *Client) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stats
}

// Drop cuts the current connection without a close handshake, as a network
// failure would; Run reconnects and resumes. It reports whether there was
// one.
func (c *Client) Drop() bool {
	c.mu.Lock()
	conn := c.conn
	c.mu.Unlock()
	if conn == nil {
		return false
	}
	conn.NetConn().Close()
	return true
}

// Run connects, and reconnects whenever the connection is lost, until ctx
// ends; it then returns ctx's error.
func (c *Client) Run(ctx context.Context) error {
	attempt := 0
	urlIndex := 0
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		url := c.opts.URLs[urlIndex%len(c.opts.URLs)]
		up, err := c.session(ctx, url)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if c.opts.OnDisconnect != nil {
			c.opts.OnDisconnect(err)
		}
		if up >= c.opts.StableAfter {
			attempt = 0
		}
		urlIndex++
		cap := c.opts.MinBackoff << min(attempt, 20)
		if cap > c.opts.MaxBackoff || cap <= 0 {
			cap = c.opts.MaxBackoff
		}
		attempt++
		t := time.NewTimer(rand.N(cap + 1))
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// session runs one connection and returns how long it was up and why it
// ended.
func (c *Client) session(ctx context.Context, url string) (time.Duration, error) {
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	conn, err := Dial(dctx, url, c.opts.Dial)
	cancel()
	if err != nil {
		return 0, err
	}
	start := time.Now()
	stop := context.AfterFunc(ctx, func() { conn.NetConn().Close() })
	defer stop()
	defer conn.NetConn().Close()

	c.mu.Lock()
	c.conn = conn
	c.stats.Connects++
	channels := append([]string(nil), c.channels...)
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.conn = nil
		c.mu.Unlock()
	}()
	if c.opts.OnConnect != nil {
		c.opts.OnConnect(url)
	}
	// One request per channel, so that a channel the server refuses does
	// not hold back the others.
	for _, ch := range channels {
		if err := c.subscribeOn(conn, ch); err != nil {
			return time.Since(start), err
		}
	}
	for {
		f, err := conn.Read()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) || errors.Is(err, net.ErrClosed) {
				err = fmt.Errorf("client: connection to %s lost: %w", url, err)
			}
			return time.Since(start), err
		}
		c.handle(f)
	}
}

func (c *Client) subscribeOn(conn *Conn, ch string) error {
	c.mu.Lock()
	req := &Request{Op: "subscribe", Channels: []string{ch}}
	if parts := c.positions[ch]; len(parts) > 0 {
		since := make(map[string]int64, len(parts))
		for p, o := range parts {
			since[strconv.Itoa(int(p))] = o
		}
		req.Since = map[string]map[string]int64{ch: since}
	} else if c.opts.Snapshot {
		req.Snapshot = true
	}
	c.mu.Unlock()
	_, err := conn.Send(req)
	return err
}

func (c *Client) handle(f *Frame) {
	switch f.Op {
	case "msg":
		c.mu.Lock()
		parts := c.positions[f.Ch]
		if parts == nil {
			parts = make(map[int32]int64)
			c.positions[f.Ch] = parts
		}
		if last, ok := parts[f.P]; ok && f.O <= last {
			c.stats.Duplicates++
			c.mu.Unlock()
			return
		}
		parts[f.P] = f.O
		c.stats.Messages++
		c.mu.Unlock()
		if c.opts.OnMessage != nil {
			c.opts.OnMessage(f)
		}
	case "ok":
		if c.opts.OnRecovered != nil && len(f.Recovered) > 0 {
			chs := make([]string, 0, len(f.Recovered))
			for ch := range f.Recovered {
				chs = append(chs, ch)
			}
			sort.Strings(chs)
			for _, ch := range chs {
				c.opts.OnRecovered(ch, f.Recovered[ch])
			}
		}
	case "error":
		if c.opts.OnError != nil {
			c.opts.OnError(f)
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

package gateway

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/kpush/kpush/gateway/client"
	"github.com/kpush/kpush/router"
)

// pushServer is a gateway on a random loopback port, fed directly through
// Publish (no Kafka).
type pushServer struct {
	*Server
	url string
}

func startPushServer(t testing.TB, cfg Config, rp Replayer) *pushServer {
	t.Helper()
	cfg.DrainTimeout = time.Second
	g := serveGateway(t, cfg, serveOptions{replayer: rp})
	return &pushServer{Server: g.srv, url: g.url}
}

// publish sends one record of ch whose data carries its offset.
func (s *pushServer) publish(ch string, p int32, o int64, keep *router.Retention, conflate bool) {
	s.Publish(&Message{Channel: ch, Partition: p, Offset: o, Timestamp: time.Now().UnixMilli(),
		Data: []byte(fmt.Sprintf(`{"o":%d}`, o)), Conflate: conflate}, keep)
}

// pushClient reads frames into a channel.
type pushClient struct {
	*client.Conn
	frames chan *client.Frame
	err    chan error
}

func dialPush(t testing.TB, url string, o *client.DialOptions) *pushClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, url, o)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	tc := &pushClient{Conn: c, frames: make(chan *client.Frame, 1<<14), err: make(chan error, 1)}
	go func() {
		defer close(tc.frames)
		for {
			f, err := c.Read()
			if err != nil {
				tc.err <- err
				return
			}
			tc.frames <- f
		}
	}()
	t.Cleanup(func() { c.NetConn().Close() })
	return tc
}

func (c *pushClient) next(t testing.TB) *client.Frame {
	t.Helper()
	select {
	case f, ok := <-c.frames:
		if !ok {
			t.Fatalf("connection closed: %v", <-c.err)
		}
		return f
	case <-time.After(10 * time.Second):
		t.Fatalf("no frame within 10s")
	}
	return nil
}

// request sends r and waits for its reply, returning the msg frames that
// came first.
func (c *pushClient) request(t testing.TB, r *client.Request) (msgs []*client.Frame, reply *client.Frame) {
	t.Helper()
	id, err := c.Send(r)
	if err != nil {
		t.Fatal(err)
	}
	for {
		f := c.next(t)
		if f.Op == "msg" {
			msgs = append(msgs, f)
			continue
		}
		if f.ID != id {
			t.Fatalf("reply %+v, want id %d", f, id)
		}
		return msgs, f
	}
}

// sync returns the msg frames that arrive before the reply to a ping.
func (c *pushClient) sync(t testing.TB) []*client.Frame {
	t.Helper()
	msgs, reply := c.request(t, &client.Request{Op: "ping"})
	if reply.Op != "pong" {
		t.Fatalf("reply %+v, want pong", reply)
	}
	return msgs
}

func (c *pushClient) closeCode(t testing.TB) int {
	t.Helper()
	for {
		select {
		case _, ok := <-c.frames:
			if ok {
				continue
			}
			var ce client.CloseError
			if err := <-c.err; errors.As(err, &ce) {
				return int(ce.Code)
			}
			return 0
		case <-time.After(10 * time.Second):
			t.Fatalf("not closed within 10s")
		}
	}
}

func offsets(msgs []*client.Frame) []int64 {
	out := make([]int64, len(msgs))
	for i, m := range msgs {
		out[i] = m.O
	}
	return out
}

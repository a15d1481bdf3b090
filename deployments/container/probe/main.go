// Command probe is the WebSocket client of `make docker-test`
// (deployments/container/docker-test.sh): it connects to a kpush running in
// a container, subscribes to one channel, and waits for a record on it.
// With -wait-close it then stays connected until the server closes the
// connection, and succeeds only if the close code is the one expected (1001
// when the container is stopped and kpush drains).
//
// Output, one line each: "subscribed", "record CHANNEL DATA", "closed CODE".
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"github.com/kpush/kpush/gateway/client"
)

func main() {
	url := flag.String("url", "ws://127.0.0.1:8080/ws", "kpush WebSocket URL")
	channel := flag.String("channel", "ticks.ZZTEST", "channel to subscribe to")
	timeout := flag.Duration("timeout", 90*time.Second, "how long to wait for the record")
	waitClose := flag.Int("wait-close", 0, "after the record, wait for the server to close with this code (0: exit at once)")
	closeTimeout := flag.Duration("close-timeout", 90*time.Second, "how long to wait for the close")
	flag.Parse()
	if err := run(*url, *channel, *timeout, *waitClose, *closeTimeout); err != nil {
		fmt.Fprintln(os.Stderr, "probe:", err)
		os.Exit(1)
	}
}

func run(url, channel string, timeout time.Duration, waitClose int, closeTimeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	c, err := client.Dial(ctx, url, nil)
	cancel()
	if err != nil {
		return err
	}
	defer c.NetConn().Close()
	if _, err := c.Send(&client.Request{Op: "subscribe", Channels: []string{channel}}); err != nil {
		return fmt.Errorf("subscribe: %w", err)
	}
	_ = c.NetConn().SetReadDeadline(time.Now().Add(timeout))
	for {
		f, err := c.Read()
		if err != nil {
			return fmt.Errorf("waiting for a record on %s: %w", channel, err)
		}
		if f.Op == "ok" {
			fmt.Println("subscribed")
			continue
		}
		if f.Op == "error" {
			return fmt.Errorf("subscribe refused: %s %s", f.Code, f.Message)
		}
		if f.Op == "msg" && f.Ch == channel && len(f.Data) > 0 {
			fmt.Printf("record %s %s\n", f.Ch, f.Data)
			break
		}
	}
	if waitClose == 0 {
		return nil
	}
	_ = c.NetConn().SetReadDeadline(time.Now().Add(closeTimeout))
	for {
		if _, err := c.Read(); err != nil {
			var ce wsutil.ClosedError
			if !errors.As(err, &ce) {
				return fmt.Errorf("waiting for the close: %w", err)
			}
			fmt.Printf("closed %d %s\n", ce.Code, ce.Reason)
			if ce.Code != ws.StatusCode(waitClose) {
				return fmt.Errorf("closed with %d, want %d", ce.Code, waitClose)
			}
			return nil
		}
	}
}

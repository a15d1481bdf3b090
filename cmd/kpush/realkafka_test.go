package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kpush/kpush/gateway/client"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// Helpers for the tests that need the real broker of deployments/local-kafka
// (make test-kafka): its fault controls (kafka-ctl.sh), the outside producer
// kcat, measurements of a kpush process (startKpushProcess), and a log of
// everything a client receives.

// realKafka is the local Apache Kafka broker named by KPUSH_TEST_KAFKA.
type realKafka struct {
	*testKafka
	addr    string
	port    string
	scripts string // deployments/local-kafka
}

// startRealKafka skips the test unless KPUSH_TEST_KAFKA names a local broker
// started by deployments/local-kafka. Whatever the test does to the broker,
// it is running again when the test ends.
func startRealKafka(t *testing.T) *realKafka {
	t.Helper()
	addr := os.Getenv("KPUSH_TEST_KAFKA")
	if addr == "" {
		t.Skip("needs the real Apache Kafka broker of deployments/local-kafka: run `make test-kafka`, which starts it and sets KPUSH_TEST_KAFKA")
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil || strings.Contains(addr, ",") {
		t.Fatalf("KPUSH_TEST_KAFKA=%q: fault tests need the one host:port of the local broker", addr)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		t.Fatalf("KPUSH_TEST_KAFKA=%q: fault tests kill and restart the broker, so it must be the local one on 127.0.0.0/8", addr)
	}
	if _, err := exec.LookPath("kcat"); err != nil {
		t.Fatalf("kcat is not installed (apt-get install kcat): the fault tests use it as an outside producer")
	}
	k := &realKafka{addr: addr, port: port, scripts: filepath.Join(repoRoot(t), "deployments", "local-kafka")}
	if _, err := os.Stat(filepath.Join(k.scripts, "kafka-ctl.sh")); err != nil {
		t.Fatalf("local-kafka scripts: %v", err)
	}
	k.testKafka = startKafka(t)
	t.Cleanup(func() { k.ctl(t, "start") }) // no-op when it runs
	return k
}

// repoRoot is the directory holding go.mod, found from the package
// directory the test runs in.
func repoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("go.mod not found above the test's directory")
		}
		dir = parent
	}
}

// ctl runs deployments/local-kafka/kafka-ctl.sh for this broker and returns
// its standard output.
func (k *realKafka) ctl(t testing.TB, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", append([]string{filepath.Join(k.scripts, "kafka-ctl.sh")}, args...)...)
	cmd.Env = append(os.Environ(), "KAFKA_PORT="+k.port)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("kafka-ctl.sh %s: %v\n%s", strings.Join(args, " "), err, stderr.Bytes())
	}
	return stdout.String()
}

// kcat produces KEY|VALUE lines to one partition with kcat (librdkafka),
// acks=all, and fails the test if kcat reports an error.
func (k *realKafka) kcat(t testing.TB, topic string, partition int32, lines ...string) {
	t.Helper()
	if err := k.tryKcat(topic, partition, nil, lines...); err != nil {
		t.Fatal(err)
	}
}

// tryKcat is kcat returning the error; extra are more kcat arguments.
func (k *realKafka) tryKcat(topic string, partition int32, extra []string, lines ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	args := []string{"-P", "-b", k.addr, "-t", topic, "-p", strconv.Itoa(int(partition)), "-K", "|",
		"-X", "acks=all", "-X", "message.timeout.ms=30000"}
	cmd := exec.CommandContext(ctx, "kcat", append(args, extra...)...)
	cmd.Stdin = strings.NewReader(strings.Join(lines, "\n") + "\n")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	if err == nil && (strings.Contains(stderr.String(), "ERROR") || strings.Contains(stderr.String(), "failed")) {
		err = fmt.Errorf("kcat reported an error")
	}
	if err != nil {
		return fmt.Errorf("kcat -P -t %s -p %d: %v\n%s", topic, partition, err, stderr.Bytes())
	}
	return nil
}

// readLog reads partitions 0..n-1 of topic from the first offset to their
// current end with an independent client, and returns each partition's
// records in offset order: what an exact consumer must deliver.
func (k *realKafka) readLog(t testing.TB, topic string, n int32) [][]*kgo.Record {
	t.Helper()
	ends := k.endOffsets(t, topic, n)
	parts := make(map[int32]kgo.Offset, n)
	for p := range n {
		parts[p] = kgo.NewOffset().AtStart()
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(k.brokers...), kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: parts}))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	out := make([][]*kgo.Record, n)
	done := func() bool {
		for p := range n {
			if ends[p] > 0 && (len(out[p]) == 0 || out[p][len(out[p])-1].Offset < ends[p]-1) {
				return false
			}
		}
		return true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for !done() {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("reading %s back: %v (have %v of ends %v)", topic, ctx.Err(), lens(out), ends)
		}
		fs.EachRecord(func(r *kgo.Record) {
			if r.Offset < ends[r.Partition] {
				out[r.Partition] = append(out[r.Partition], r)
			}
		})
	}
	return out
}

func lens(recs [][]*kgo.Record) []int {
	n := make([]int, len(recs))
	for i, r := range recs {
		n[i] = len(r)
	}
	return n
}

// endOffsets returns the offset the next record of each partition will get.
func (k *realKafka) endOffsets(t testing.TB, topic string, n int32) []int64 {
	t.Helper()
	req := kmsg.NewPtrListOffsetsRequest()
	rt := kmsg.NewListOffsetsRequestTopic()
	rt.Topic = topic
	for p := range n {
		rp := kmsg.NewListOffsetsRequestTopicPartition()
		rp.Partition = p
		rp.Timestamp = -1 // latest
		rt.Partitions = append(rt.Partitions, rp)
	}
	req.Topics = append(req.Topics, rt)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	resp, err := req.RequestWith(ctx, k.cl)
	if err != nil {
		t.Fatalf("list offsets of %s: %v", topic, err)
	}
	ends := make([]int64, n)
	for _, rt := range resp.Topics {
		for _, rp := range rt.Partitions {
			if rp.ErrorCode != 0 {
				t.Fatalf("list offsets of %s[%d]: error code %d", topic, rp.Partition, rp.ErrorCode)
			}
			ends[rp.Partition] = rp.Offset
		}
	}
	return ends
}

// frameLog records every frame one client receives, so a test can check
// the whole stream after the fact.
type frameLog struct {
	w      *wsClient
	mu     sync.Mutex
	frames []*client.Frame // guarded by mu
	closed error           // guarded by mu; why the connection ended
	ended  bool            // guarded by mu
}

// collect starts recording w's frames; the test must not read w.frames
// itself afterwards.
func collect(w *wsClient) *frameLog {
	l := &frameLog{w: w}
	go func() {
		for f := range w.frames {
			l.mu.Lock()
			l.frames = append(l.frames, f)
			l.mu.Unlock()
		}
		err := <-w.closed
		l.mu.Lock()
		l.closed, l.ended = err, true
		l.mu.Unlock()
	}()
	return l
}

// msgs returns the msg frames received so far, in arrival order.
func (l *frameLog) msgs() []*client.Frame {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []*client.Frame
	for _, f := range l.frames {
		if f.Op == "msg" {
			out = append(out, f)
		}
	}
	return out
}

// waitMsgs waits until at least n msg frames arrived and returns them.
func (l *frameLog) waitMsgs(t testing.TB, n int, d time.Duration) []*client.Frame {
	t.Helper()
	var got []*client.Frame
	waitFor(t, d, fmt.Sprintf("%d messages", n), func() bool {
		got = l.msgs()
		return len(got) >= n || l.isEnded()
	})
	if len(got) < n {
		t.Fatalf("connection ended after %d of %d messages: %v", len(got), n, l.closed)
	}
	return got
}

// waitFor waits until cond holds for the msg frames received so far.
func (l *frameLog) waitFor(t testing.TB, d time.Duration, what string, cond func([]*client.Frame) bool) {
	t.Helper()
	waitFor(t, d, what, func() bool {
		if l.isEnded() {
			t.Fatalf("connection ended while waiting for %s: %v", what, l.closed)
		}
		return cond(l.msgs())
	})
}

// hasMsg reports whether msgs holds the record at partition p, offset o on
// channel ch with data.
func hasMsg(msgs []*client.Frame, ch string, p int32, o int64, data string) bool {
	for _, f := range msgs {
		if f.Ch == ch && f.P == p && f.O == o && string(f.Data) == data {
			return true
		}
	}
	return false
}

func (l *frameLog) isEnded() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ended
}

// stillOpen checks that the connection was never closed and still answers
// a ping on the same socket.
func (l *frameLog) stillOpen(t testing.TB) {
	t.Helper()
	if l.isEnded() {
		t.Fatalf("connection closed: %v", l.closed)
	}
	id, err := l.w.Send(&client.Request{Op: "ping"})
	if err != nil {
		t.Fatalf("ping: %v", err)
	}
	waitFor(t, 10*time.Second, "pong", func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		for _, f := range l.frames {
			if f.Op == "pong" && f.ID == id {
				return true
			}
		}
		return l.ended
	})
	if l.isEnded() {
		t.Fatalf("connection closed: %v", l.closed)
	}
}

// sameAsLog checks that msgs (one channel per partition, ch(p)) are
// exactly the records of the partitions in want, each once and in offset
// order per partition, with the record's value and timestamp.
func sameAsLog(t testing.TB, who string, msgs []*client.Frame, want map[int32][]*kgo.Record, ch func(p int32) string) {
	t.Helper()
	byPart := make(map[int32][]*client.Frame)
	for _, f := range msgs {
		byPart[f.P] = append(byPart[f.P], f)
	}
	for p := range byPart {
		if _, ok := want[p]; !ok {
			t.Errorf("%s: %d messages from partition %d, which it is not subscribed to", who, len(byPart[p]), p)
		}
	}
	for p, recs := range want {
		got := byPart[p]
		for i := 1; i < len(got); i++ {
			if got[i].O <= got[i-1].O {
				t.Errorf("%s: partition %d: offset %d arrived after %d (repeated or out of order)", who, p, got[i].O, got[i-1].O)
			}
		}
		if len(got) != len(recs) {
			t.Errorf("%s: partition %d: %d messages, the log holds %d records", who, p, len(got), len(recs))
			continue
		}
		for i, r := range recs {
			f := got[i]
			if f.O != r.Offset || f.Ch != ch(p) || !bytes.Equal(f.Data, r.Value) || f.TS != r.Timestamp.UnixMilli() {
				t.Errorf("%s: partition %d message %d: ch=%s o=%d ts=%d data=%s, want ch=%s o=%d ts=%d data=%s",
					who, p, i, f.Ch, f.O, f.TS, f.Data, ch(p), r.Offset, r.Timestamp.UnixMilli(), r.Value)
				break
			}
		}
	}
}

// cpuTicks returns the process's user+system CPU time in clock ticks
// (USER_HZ, 100 per second on Linux).
func (p *kpushProcess) cpuTicks(t testing.TB) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
	if err != nil {
		t.Fatalf("kpush process: %v", err)
	}
	// Fields after the command name, which is in parentheses and may
	// contain spaces: state is the first, utime the 12th, stime the 13th.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return ut + st
}

// cpuShare measures the share of one core kpush used over d (a
// measurement window, not a wait for a condition).
func (p *kpushProcess) cpuShare(t testing.TB, d time.Duration) float64 {
	t.Helper()
	t0, c0 := time.Now(), p.cpuTicks(t)
	time.Sleep(d)
	c1, el := p.cpuTicks(t), time.Since(t0)
	return float64(c1-c0) / 100 / el.Seconds()
}

func (p *kpushProcess) metric(t testing.TB, name string, filters ...string) float64 {
	return (&testApp{adminURL: p.adminURL}).metric(t, name, filters...)
}

// stop sends SIGTERM and checks that kpush drains and exits with status 0.
func (p *kpushProcess) stop(t testing.TB) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM: %v", err)
	}
	select {
	case <-p.exited:
		if p.err != nil {
			t.Fatalf("kpush exited with %v after SIGTERM", p.err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("kpush still running 30s after SIGTERM")
	}
}

// decodeB64 returns the bytes a base64 msg frame carries.
func decodeB64(t testing.TB, data []byte) string {
	t.Helper()
	var s string
	if err := json.Unmarshal(data, &s); err != nil {
		t.Fatalf("data %s is not a JSON string: %v", data, err)
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		t.Fatalf("data %s is not base64: %v", data, err)
	}
	return string(b)
}

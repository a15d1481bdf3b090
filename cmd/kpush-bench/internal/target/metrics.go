package target

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Metrics are the kpush series the benchmark reads, summed over labels.
type Metrics struct {
	At            time.Time `json:"-"`
	CPUSeconds    float64   `json:"cpu_seconds"`     // process_cpu_seconds_total (user + system)
	RSSBytes      float64   `json:"rss_bytes"`       // process_resident_memory_bytes
	Goroutines    float64   `json:"goroutines"`      // go_goroutines
	HeapInuse     float64   `json:"heap_inuse"`      // go_memstats_heap_inuse_bytes
	HeapAlloc     float64   `json:"heap_alloc"`      // go_memstats_heap_alloc_bytes (live after a GC)
	Connections   float64   `json:"connections"`     // kpush_connections
	Subscriptions float64   `json:"subscriptions"`   // kpush_subscriptions
	Channels      float64   `json:"channels"`        // kpush_channels
	Published     float64   `json:"published"`       // kpush_published_total
	Deliveries    float64   `json:"deliveries"`      // kpush_deliveries_total
	QueueFull     float64   `json:"queue_full"`      // kpush_queue_full_total
	SlowConsumers float64   `json:"slow_consumers"`  // kpush_slow_consumers_total
	HandshakesOK  float64   `json:"handshakes_ok"`   // kpush_handshakes_total{result="ok"}
	HandshakesBad float64   `json:"handshakes_fail"` // kpush_handshakes_total{result!="ok"}
	RejectedPerIP float64   `json:"rejected_per_ip"` // kpush_rejected_total{reason="handshakes_per_ip"}
	Writes        float64   `json:"writes"`          // kpush_delivery_latency_seconds_count: socket writes carrying a record
	SocketWrites  float64   `json:"socket_writes"`   // kpush_socket_writes_total: every write call
	// LatencyBuckets are kpush_delivery_latency_seconds' cumulative
	// buckets (Kafka timestamp to socket write, once per write), by upper
	// bound in seconds.
	LatencyBuckets []Bucket `json:"-"`
}

// Bucket is one cumulative histogram bucket.
type Bucket struct {
	LE    float64
	Count float64
}

// LatencyQuantile returns the upper bound of the bucket holding quantile q
// of the writes between earlier and m (+Inf if beyond the last bound, 0 if
// there were none).
func (m Metrics) LatencyQuantile(earlier Metrics, q float64) float64 {
	if len(m.LatencyBuckets) == 0 {
		return 0
	}
	prev := map[float64]float64{}
	for _, b := range earlier.LatencyBuckets {
		prev[b.LE] = b.Count
	}
	total := m.LatencyBuckets[len(m.LatencyBuckets)-1].Count - prev[m.LatencyBuckets[len(m.LatencyBuckets)-1].LE]
	if total <= 0 {
		return 0
	}
	for _, b := range m.LatencyBuckets {
		if b.Count-prev[b.LE] >= q*total {
			return b.LE
		}
	}
	return math.Inf(1)
}

// series maps each metric name to the field it fills. A filter, when set,
// must appear in the sample's labels; exclude must not.
var series = []struct {
	name, filter, exclude string
	field                 func(*Metrics) *float64
}{
	{"process_cpu_seconds_total", "", "", func(m *Metrics) *float64 { return &m.CPUSeconds }},
	{"process_resident_memory_bytes", "", "", func(m *Metrics) *float64 { return &m.RSSBytes }},
	{"go_goroutines", "", "", func(m *Metrics) *float64 { return &m.Goroutines }},
	{"go_memstats_heap_inuse_bytes", "", "", func(m *Metrics) *float64 { return &m.HeapInuse }},
	{"go_memstats_heap_alloc_bytes", "", "", func(m *Metrics) *float64 { return &m.HeapAlloc }},
	{"kpush_connections", "", "", func(m *Metrics) *float64 { return &m.Connections }},
	{"kpush_subscriptions", "", "", func(m *Metrics) *float64 { return &m.Subscriptions }},
	{"kpush_channels", "", "", func(m *Metrics) *float64 { return &m.Channels }},
	{"kpush_published_total", "", "", func(m *Metrics) *float64 { return &m.Published }},
	{"kpush_deliveries_total", "", "", func(m *Metrics) *float64 { return &m.Deliveries }},
	{"kpush_socket_writes_total", "", "", func(m *Metrics) *float64 { return &m.SocketWrites }},
	{"kpush_queue_full_total", "", "", func(m *Metrics) *float64 { return &m.QueueFull }},
	{"kpush_slow_consumers_total", "", "", func(m *Metrics) *float64 { return &m.SlowConsumers }},
	{"kpush_handshakes_total", `result="ok"`, "", func(m *Metrics) *float64 { return &m.HandshakesOK }},
	{"kpush_handshakes_total", "", `result="ok"`, func(m *Metrics) *float64 { return &m.HandshakesBad }},
	{"kpush_delivery_latency_seconds_count", "", "", func(m *Metrics) *float64 { return &m.Writes }},
	{"kpush_rejected_total", `reason="handshakes_per_ip"`, "", func(m *Metrics) *float64 { return &m.RejectedPerIP }},
}

// ParseMetrics reads the Prometheus text exposition format and sums the
// samples of the series in Metrics. Lines it does not understand are
// skipped; it never fails on odd input.
func ParseMetrics(r io.Reader) (Metrics, error) {
	var m Metrics
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		name, labels, value, ok := parseSample(sc.Text())
		if !ok {
			continue
		}
		if name == "kpush_delivery_latency_seconds_bucket" {
			if le, ok := labelValue(labels, "le"); ok {
				if bound, err := strconv.ParseFloat(le, 64); err == nil {
					m.LatencyBuckets = append(m.LatencyBuckets, Bucket{LE: bound, Count: value})
				}
			}
			continue
		}
		for _, s := range series {
			if s.name != name {
				continue
			}
			if s.filter != "" && !strings.Contains(labels, s.filter) {
				continue
			}
			if s.exclude != "" && strings.Contains(labels, s.exclude) {
				continue
			}
			*s.field(&m) += value
		}
	}
	if err := sc.Err(); err != nil {
		return m, fmt.Errorf("target: read metrics: %w", err)
	}
	return m, nil
}

// labelValue returns the value of label key in `a="x",b="y"`.
func labelValue(labels, key string) (string, bool) {
	for _, kv := range strings.Split(labels, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if ok && strings.TrimSpace(k) == key {
			return strings.Trim(v, `"`), true
		}
	}
	return "", false
}

// parseSample splits `name{labels} value [timestamp]`.
func parseSample(line string) (name, labels string, value float64, ok bool) {
	if line == "" || line[0] == '#' {
		return "", "", 0, false
	}
	end := strings.IndexAny(line, "{ ")
	if end <= 0 {
		return "", "", 0, false
	}
	name, rest := line[:end], line[end:]
	if rest[0] == '{' {
		close := strings.LastIndexByte(rest, '}')
		if close < 0 {
			return "", "", 0, false
		}
		labels, rest = rest[1:close], rest[close+1:]
	}
	fields := strings.Fields(rest)
	if len(fields) == 0 {
		return "", "", 0, false
	}
	v, err := strconv.ParseFloat(fields[0], 64)
	if err != nil || math.IsNaN(v) {
		return "", "", 0, false
	}
	return name, labels, v, true
}

var httpClient = &http.Client{Timeout: 30 * time.Second}

// Scrape reads kpush's /metrics at adminURL (http://host:port).
func Scrape(ctx context.Context, adminURL string) (Metrics, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, adminURL+"/metrics", nil)
	if err != nil {
		return Metrics{}, fmt.Errorf("target: scrape: %w", err)
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return Metrics{}, fmt.Errorf("target: scrape %s: %w", adminURL, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return Metrics{}, fmt.Errorf("target: scrape %s: %s", adminURL, resp.Status)
	}
	m, err := ParseMetrics(resp.Body)
	m.At = time.Now()
	return m, err
}

// GC makes kpush run a full garbage collection by asking for a heap profile
// with gc=1, and discards the profile.
func GC(ctx context.Context, adminURL string) error {
	return fetch(ctx, adminURL+"/debug/pprof/heap?gc=1", io.Discard)
}

// Heap writes kpush's heap profile (after a GC) to w.
func Heap(ctx context.Context, adminURL string, w io.Writer) error {
	return fetch(ctx, adminURL+"/debug/pprof/heap?gc=1", w)
}

// Profile writes a CPU profile of kpush over d to w.
func Profile(ctx context.Context, adminURL string, d time.Duration, w io.Writer) error {
	secs := max(1, int(d.Round(time.Second)/time.Second))
	return fetch(ctx, fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", adminURL, secs), w)
}

func fetch(ctx context.Context, url string, w io.Writer) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("target: %w", err)
	}
	cl := &http.Client{} // profiles may take longer than httpClient's timeout
	resp, err := cl.Do(req)
	if err != nil {
		return fmt.Errorf("target: get %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("target: get %s: %s", url, resp.Status)
	}
	if _, err := io.Copy(w, resp.Body); err != nil {
		return fmt.Errorf("target: read %s: %w", url, err)
	}
	return nil
}

// Delta is what changed between two scrapes.
type Delta struct {
	Wall       time.Duration
	CPUSeconds float64
	Deliveries float64
	Published  float64
}

// Sub returns m − earlier for the counters.
func (m Metrics) Sub(earlier Metrics) Delta {
	return Delta{
		Wall:       m.At.Sub(earlier.At),
		CPUSeconds: m.CPUSeconds - earlier.CPUSeconds,
		Deliveries: m.Deliveries - earlier.Deliveries,
		Published:  m.Published - earlier.Published,
	}
}

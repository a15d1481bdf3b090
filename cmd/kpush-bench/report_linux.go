package main

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/kpush/kpush/cmd/kpush-bench/internal/hist"
)

// Report is everything one run measured.
type Report struct {
	Machine   Machine          `json:"machine"`
	Command   string           `json:"command"`
	Started   time.Time        `json:"started"`
	Took      string           `json:"took"`
	Idle      *IdleResult      `json:"idle,omitempty"`
	Fanout    *FanoutResult    `json:"fanout,omitempty"`
	Market    *MarketResult    `json:"market,omitempty"`
	Handshake *HandshakeResult `json:"handshake,omitempty"`
	CloseAll  *CloseAllResult  `json:"closeall,omitempty"`
	Trim      *TrimResult      `json:"trim,omitempty"`
}

// Machine says where the numbers come from.
type Machine struct {
	CPU        string `json:"cpu"`
	CPUs       int    `json:"cpus"`
	MemoryMiB  int64  `json:"memory_mib"`
	Kernel     string `json:"kernel"`
	Go         string `json:"go"`
	OpenFiles  uint64 `json:"open_files_limit"`
	LoadBefore string `json:"load_before"`
}

func describeMachine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), Go: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "model name") {
				m.CPU = strings.TrimSpace(line[strings.IndexByte(line, ':')+1:])
				break
			}
		}
	}
	var si syscall.Sysinfo_t
	if syscall.Sysinfo(&si) == nil {
		m.MemoryMiB = int64(si.Totalram) * int64(si.Unit) >> 20
	}
	var u syscall.Utsname
	if syscall.Uname(&u) == nil {
		var b strings.Builder
		for _, c := range u.Release {
			if c == 0 {
				break
			}
			b.WriteByte(byte(c))
		}
		m.Kernel = b.String()
	}
	var rl syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl) == nil {
		m.OpenFiles = rl.Cur
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		m.LoadBefore = strings.Join(strings.Fields(string(b))[:3], " ")
	}
	return m
}

// printReport writes the results as Markdown tables.
func printReport(w io.Writer, r *Report) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format, args...) }
	p("\n## kpush-bench results\n\n")
	p("Machine: %s, %d CPUs, %d MiB, Linux %s, %s, open files %d, load before %s.  \n",
		r.Machine.CPU, r.Machine.CPUs, r.Machine.MemoryMiB, r.Machine.Kernel, r.Machine.Go, r.Machine.OpenFiles, r.Machine.LoadBefore)
	p("Command: `%s` (took %s)\n", r.Command, r.Took)
	if r.Idle != nil {
		p("\n### Idle connections (protocol %s, %d channels, settle %s)\n\n", r.Idle.Protocol, r.Idle.Channels, r.Idle.Settle)
		p("| connections | kpush RSS | RSS/conn | live heap | heap/conn | goroutines | goroutines/conn | open+subscribe | generator RSS |\n")
		p("|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		b := r.Idle.Baseline
		p("| 0 | %s | | %s | | %.0f | | | |\n", mib(b.RSSBytes), mib(b.HeapAllocBytes), b.Goroutines)
		for _, s := range r.Idle.Steps {
			p("| %d | %s | %.0f B | %s | %.0f B | %.0f | %.4f | %.2fs | %s |\n", s.Conns, mib(s.RSSBytes), s.RSSPerConn,
				mib(s.HeapAllocBytes), s.HeapPerConn, s.Goroutines, s.GoroutinesPerConn, s.OpenSeconds, mib(float64(s.Generator.RSSBytes)))
		}
	}
	if f := r.Fanout; f != nil {
		p("\n### Fan-out: one channel, %d subscribers (protocol %s), %d-byte records\n\n", f.Subscribers, f.Protocol, f.RecordBytes)
		stepHeader(p)
		for _, s := range f.Steps {
			stepRow(p, s)
		}
		if f.Half != nil {
			stepRow(p, *f.Half)
		}
		p("\nMax rate kept up: %g records/s = %s deliveries/s; best %s deliveries per kpush CPU-second (any step).",
			f.MaxRate, si(f.MaxDeliveriesPerSec), si(f.BestDeliveriesPerCPU))
		if f.Half != nil {
			p(" At 50%% of the max (%g/s): p50 %s, p90 %s, p99 %s, p99.9 %s, max %s.", f.Half.Rate,
				ms(f.Half.Latency.P50), ms(f.Half.Latency.P90), ms(f.Half.Latency.P99), ms(f.Half.Latency.P999), ms(f.Half.Latency.Max))
		}
		p("\n")
		steps := append([]Step{}, f.Steps...)
		if f.Half != nil {
			steps = append(steps, *f.Half)
		}
		kernelTable(p, steps)
	}
	if m := r.Market; m != nil {
		p("\n### Market mix: %d connections × %d of %d symbols (Zipf %.2f), %g records/s (%s over symbols), %d partitions\n\n",
			m.Conns, m.SubsPerConn, m.Symbols, m.Zipf, m.Step.Rate, m.RecordDist, m.Partitions)
		p("Hottest symbol: %d subscribers; %.0f deliveries per record on average.\n\n", m.HottestSymbolSubs, m.MeanDeliveriesPerRecord)
		stepHeader(p)
		stepRow(p, m.Step)
		kernelTable(p, []Step{m.Step})
	}
	if h := r.Handshake; h != nil {
		p("\n### Handshakes\n\n")
		p("| in flight | upgrades | took | upgrades/s | kpush CPU-s | per kpush CPU-second | p50 | p99 | failed | generator cores |\n")
		p("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, x := range h.Rounds {
			p("| %d | %d | %.2fs | %s | %.2f | %s | %s | %s | %d | %.2f |\n", x.InFlight, x.Conns, x.Seconds, si(x.PerSec),
				x.KpushCPUSeconds, si(x.PerKpushCPUSecond), ms(x.Latency.P50), ms(x.Latency.P99), x.Failed, x.Generator.Cores)
		}
		if s := h.Storm; s != nil {
			p("\nReconnect storm: %d connections × %d channels dropped at once (TCP reset) and reconnected with %d in flight: all subscribed again after %.2fs; kpush held exactly the new connections after %.2fs; kpush %.2f CPU-s; %d failed.\n",
				s.Conns, s.SubsPerConn, s.InFlight, s.Seconds, s.KpushSeconds, s.KpushCPUSeconds, s.Failed)
		}
	}
	if c := r.CloseAll; c != nil {
		p("\n### Close-all: %d connections × %d channels reset at once, %d probes at %g records/s, %d cycles\n\n", c.Conns, c.SubsPerConn, c.Probes, c.Rate, c.Cycles)
		p("| probe latency | samples | p50 | p90 | p99 | p99.9 | max |\n|---|---:|---:|---:|---:|---:|---:|\n")
		for _, row := range []struct {
			name string
			s    hist.Summary
		}{{"all open", c.Steady}, {"while closing", c.Closing}} {
			p("| %s | %d | %s | %s | %s | %s | %s |\n", row.name, row.s.Count, ms(row.s.P50), ms(row.s.P90), ms(row.s.P99), ms(row.s.P999), ms(row.s.Max))
		}
		p("\nkpush released the dropped connections in %v s.\n", c.ReleaseSeconds)
	}
	if t := r.Trim; t != nil {
		p("\n### Trim: %d connections × %d channels open, %d probes × %d channels at %g records/s, %gs per phase, then %d retained channels\n\n", t.Conns, t.SubsPerConn, t.Probes, t.ProbeChannels, t.Rate, t.Seconds, t.Retained)
		p("| phase | kpush channels | samples | p50 | p90 | p99 | p99.9 | max | kpush cores |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, row := range []struct {
			name string
			ph   TrimPhase
		}{{"baseline", t.Baseline}, {"retained", t.Trim}} {
			s := row.ph.Latency
			p("| %s | %.0f | %d | %s | %s | %s | %s | %s | %.2f |\n", row.name, row.ph.Channels, s.Count, ms(s.P50), ms(s.P90), ms(s.P99), ms(s.P999), ms(s.Max), row.ph.KpushCores)
		}
		p("\nThe fill took %.1f s; kpush's heap after it: %s.\n", t.FillSeconds, mib(t.HeapAlloc))
	}
}

func stepHeader(p func(string, ...any)) {
	p("| records/s | deliveries/s | kpush cores (user+sys) | frames/write | deliveries per kpush CPU-s | p50 | p90 | p99 | p99.9 | max | kpush's histogram | skipped | missing | dup | gaps | kept up | generator cores |\n")
	p("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:--|---:|---:|---:|---:|:--|---:|\n")
}

func stepRow(p func(string, ...any), s Step) {
	l := s.Latency
	kept := "yes"
	if !s.KeptUp {
		kept = "no: " + s.Note
	}
	cores := fmt.Sprintf("%.2f", s.KpushCores)
	if s.KpushUserSeconds+s.KpushSystemSeconds > 0 && s.Seconds > 0 {
		cores += fmt.Sprintf(" (%.2f+%.2f)", s.KpushUserSeconds/s.Seconds, s.KpushSystemSeconds/s.Seconds)
	}
	p("| %g | %s | %s | %.1f | %s | %s | %s | %s | %s | %s | %s | %d | %d | %d | %d | %s | %.2f |\n", s.Rate, si(s.DeliveriesPerSec), cores,
		s.FramesPerWrite, si(s.DeliveriesPerKpushCPU), ms(l.P50), ms(l.P90), ms(l.P99), ms(l.P999), ms(l.Max), s.KpushLatency, s.Skipped, s.Missing, s.Duplicates, s.Gaps, kept, s.Generator.Cores)
}

// kernelTable sets each step against the plain writev loop of the same run
// (kernel_linux.go): nothing when the loop did not run.
func kernelTable(p func(string, ...any), steps []Step) {
	have := false
	for _, s := range steps {
		have = have || s.Kernel != nil
	}
	if !have {
		return
	}
	p("\nAgainst the plain writev loop of the same run (same frames, same number of sockets, one writev each with kpush's frames per write, rounded; kpush ÷ plain = kpush's deliveries per CPU-s ÷ (kpush's frames per write ÷ the loop's CPU per write); per socket write = the loop's CPU per write ÷ kpush's CPU per socket write, which does not count the records a cap replaced):\n\n")
	p("| records/s | frames/write | kpush deliveries per CPU-s | plain loop frames per CPU-s (sockets × frames per writev) | plain loop CPU per write | kpush ÷ plain | per socket write | p99 | p99 of the newest value | plain loop: one record to every subscriber | p99 ÷ that | newest p99 ÷ that |\n")
	p("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, s := range steps {
		k := s.Kernel
		if k == nil {
			continue
		}
		newest, newestRatio := "", ""
		if s.Newest != nil {
			newest, newestRatio = ms(s.Newest.P99), fmt.Sprintf("%.1f", s.NewestP99OverSweep)
		}
		p("| %g | %.1f | %s | %s (%d × %d) | %.1f µs | %.2f | %.2f | %s | %s | %s | %.1f | %s |\n", s.Rate, s.FramesPerWrite, si(s.DeliveriesPerKpushCPU),
			si(k.DeliveriesPerCPU), k.Sockets, k.FramesPerWrite, k.CPUPerWrite*1e6, s.KernelRatio, s.KernelWriteRatio, ms(s.Latency.P99), newest,
			ms(time.Duration(s.KernelSweepSeconds*float64(time.Second))), s.P99OverSweep, newestRatio)
	}
}

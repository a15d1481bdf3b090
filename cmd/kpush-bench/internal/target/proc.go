package target

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Options say how to start kpush.
type Options struct {
	Binary string // path of a built kpush
	Config []byte // configuration file contents; listen and admin_listen on port 0
	WSPath string // gateway.path in Config
	Dir    string // where the configuration and kpush.log are written
	Env    []string
	CPUs   string // if set, kpush runs under taskset -c CPUs
}

// Proc is a kpush process started by Start.
type Proc struct {
	WSURL    string // ws://host:port/path
	AdminURL string // http://host:port
	LogPath  string

	cmd    *exec.Cmd
	exited chan struct{} // closed when the process has been waited for
	err    error         // Wait's result; read after exited is closed
}

// runningLine is kpush's start-up log line naming its addresses.
type runningLine struct {
	Msg    string `json:"msg"`
	Listen string `json:"listen"`
	Admin  string `json:"admin"`
}

// Start runs kpush and returns once it answers /readyz with 200, which
// means its consumer reads every routed partition. ctx bounds the start-up
// only; the process runs until Stop.
func Start(ctx context.Context, o Options) (*Proc, error) {
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("target: %w", err)
	}
	cfgPath := filepath.Join(o.Dir, "kpush.yaml")
	if err := os.WriteFile(cfgPath, o.Config, 0o644); err != nil {
		return nil, fmt.Errorf("target: write config: %w", err)
	}
	logPath := filepath.Join(o.Dir, "kpush.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("target: %w", err)
	}
	cmd := exec.Command(o.Binary, "-config", cfgPath)
	if o.CPUs != "" {
		cmd = exec.Command("taskset", "-c", o.CPUs, o.Binary, "-config", cfgPath)
	}
	cmd.Env = append(os.Environ(), o.Env...)
	cmd.Stdout = logf
	cmd.SysProcAttr = sysProcAttr()
	stderr, err := cmd.StderrPipe()
	if err != nil {
		logf.Close()
		return nil, fmt.Errorf("target: %w", err)
	}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("target: start %s: %w", o.Binary, err)
	}
	p := &Proc{LogPath: logPath, cmd: cmd, exited: make(chan struct{})}
	addrs := make(chan runningLine, 1)
	// The log copier ends when kpush closes stderr, i.e. when it exits;
	// the waiter below reaps the process after it.
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		found := false
		for sc.Scan() {
			line := sc.Bytes()
			_, _ = logf.Write(append(line, '\n'))
			if !found && strings.Contains(sc.Text(), `"kpush running"`) {
				var rl runningLine
				if json.Unmarshal(line, &rl) == nil && rl.Listen != "" {
					found = true
					addrs <- rl
				}
			}
		}
		_, _ = io.Copy(logf, stderr)
	}()
	go func() {
		<-copied
		p.err = cmd.Wait()
		logf.Close()
		close(p.exited)
	}()

	var rl runningLine
	select {
	case rl = <-addrs:
	case <-p.exited:
		return nil, fmt.Errorf("target: kpush exited during start-up (%v); see %s", p.err, logPath)
	case <-ctx.Done():
		p.Stop()
		return nil, fmt.Errorf("target: kpush did not log its addresses: %w; see %s", ctx.Err(), logPath)
	}
	p.WSURL = "ws://" + rl.Listen + o.WSPath
	p.AdminURL = "http://" + rl.Admin
	if err := WaitReady(ctx, p.AdminURL); err != nil {
		p.Stop()
		return nil, fmt.Errorf("%w; see %s", err, logPath)
	}
	return p, nil
}

// WaitReady polls adminURL/readyz until it answers 200 or ctx ends.
func WaitReady(ctx context.Context, adminURL string) error {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, adminURL+"/readyz", nil)
		if resp, err := httpClient.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("target: %s/readyz not 200: %w", adminURL, ctx.Err())
		case <-t.C:
		}
	}
}

// Stop ends kpush: SIGTERM (it drains its connections over its
// drain_timeout), then SIGKILL if it has not exited within 30 seconds. Safe
// to call twice.
func (p *Proc) Stop() error {
	select {
	case <-p.exited:
		return nil
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
		return errors.New("target: kpush ignored SIGTERM for 30s and was killed")
	}
	var ee *exec.ExitError
	if p.err != nil && !errors.As(p.err, &ee) {
		return fmt.Errorf("target: wait for kpush: %w", p.err)
	}
	return nil
}

// Pid is kpush's process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// CPU is a process's user and system CPU seconds.
type CPU struct {
	User, System float64
}

// ProcCPU reads a local process's CPU time from /proc/PID/stat. It returns
// zeros if the process is not readable (kpush on another host).
func ProcCPU(pid int) CPU {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return CPU{}
	}
	return parseStat(string(b))
}

// clockTicks is USER_HZ, 100 on every Linux architecture Go supports.
const clockTicks = 100

// parseStat reads utime and stime (fields 14 and 15) from a stat line; the
// command name in field 2 may contain spaces, so fields count from its ')'.
func parseStat(s string) CPU {
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return CPU{}
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return CPU{}
	}
	u, err1 := strconv.ParseFloat(f[11], 64)
	st, err2 := strconv.ParseFloat(f[12], 64)
	if err1 != nil || err2 != nil {
		return CPU{}
	}
	return CPU{User: u / clockTicks, System: st / clockTicks}
}

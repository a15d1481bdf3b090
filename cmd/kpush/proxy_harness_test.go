package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"text/template"
	"time"

	"github.com/kpush/kpush/gateway/client"
)

// Real proxies in front of kpush: Debian's nginx and haproxy, started by the
// tests on random loopback ports, in the foreground, and killed in
// t.Cleanup. Without the binary a test skips, unless CI=true: then it fails
// (.ci/run installs both).

// proxyBinary finds a proxy's binary (also in /usr/sbin, which a non-root
// PATH may lack).
func proxyBinary(t *testing.T, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range []string{"/usr/sbin", "/usr/local/sbin"} {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s not installed (CI=true: the proxy tests must run; .ci/run installs it)", name)
	}
	t.Skipf("%s not installed (apt-get install %s)", name, name)
	return ""
}

// freeLoopbackPort returns a port that was free a moment ago.
func freeLoopbackPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// proxyProcess is nginx or haproxy running in the foreground.
type proxyProcess struct {
	name   string
	cmd    *exec.Cmd
	dir    string
	addr   string // where clients connect
	exited chan struct{}
}

// startProxyProcess runs argv until the test ends and waits for addr to
// accept connections. The proxy runs in a process group of its own, so that
// the cleanup ends its workers too; its output goes to dir/output.
func startProxyProcess(t *testing.T, name, dir, addr string, argv ...string) *proxyProcess {
	t.Helper()
	p := &proxyProcess{name: name, dir: dir, addr: addr, exited: make(chan struct{})}
	out, err := os.Create(filepath.Join(dir, "output"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	p.cmd = exec.Command(argv[0], argv[1:]...)
	p.cmd.Stdout, p.cmd.Stderr = out, out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	pgid := p.cmd.Process.Pid
	go func() {
		_ = p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		_ = syscall.Kill(-pgid, syscall.SIGKILL) // the master and its workers
		<-p.exited
		if t.Failed() {
			t.Logf("%s output:\n%s", name, p.logs())
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return p
		}
		select {
		case <-p.exited:
			t.Fatalf("%s exited at start:\n%s", name, p.logs())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not listening on %s within 20s: %v", name, addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// logs returns the proxy's output and error log.
func (p *proxyProcess) logs() string {
	out, _ := os.ReadFile(filepath.Join(p.dir, "output"))
	return string(out) + p.errorLog()
}

func (p *proxyProcess) errorLog() string {
	b, err := os.ReadFile(filepath.Join(p.dir, "error.log"))
	if err != nil {
		return ""
	}
	return "\nerror.log:\n" + string(b)
}

// waitErrorLog waits for a line of nginx's error log to match re and
// returns the submatches.
func (p *proxyProcess) waitErrorLog(t *testing.T, re *regexp.Regexp) []string {
	t.Helper()
	var m []string
	waitFor(t, 20*time.Second, "nginx to log "+re.String(), func() bool {
		b, _ := os.ReadFile(filepath.Join(p.dir, "error.log"))
		m = re.FindStringSubmatch(string(b))
		return m != nil
	})
	return m
}

// wsURL is the proxy's WebSocket URL.
func (p *proxyProcess) wsURL() string { return "ws://" + p.addr + "/ws" }

// nginxConf are the values of testdata/nginx-ingress.conf.tmpl.
type nginxConf struct {
	Root            bool
	Dir             string
	Listen          string
	Upstreams       []string // the first is primary, the others backups
	ShutdownTimeout string
}

// startNginx runs nginx in front of the kpush instances at upstreams
// (host:port), configured as ingress-nginx would be.
func startNginx(t *testing.T, shutdownTimeout string, upstreams ...string) *proxyProcess {
	t.Helper()
	bin := proxyBinary(t, "nginx")
	dir := t.TempDir()
	tmpl, err := template.ParseFiles("testdata/nginx-ingress.conf.tmpl")
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", freeLoopbackPort(t))
	var conf bytes.Buffer
	if err := tmpl.Execute(&conf, nginxConf{
		Root: os.Geteuid() == 0, Dir: dir, Listen: addr, Upstreams: upstreams, ShutdownTimeout: shutdownTimeout,
	}); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, conf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	// -e: the error log before the configuration is read (nginx >= 1.19.5).
	return startProxyProcess(t, "nginx", dir, addr, bin, "-p", dir, "-c", path, "-e", filepath.Join(dir, "error.log"))
}

// reloadNginx runs `nginx -s reload` against p, as ingress-nginx does on
// every configuration change.
func reloadNginx(t *testing.T, p *proxyProcess) {
	t.Helper()
	bin := proxyBinary(t, "nginx")
	out, err := exec.Command(bin, "-p", p.dir, "-c", filepath.Join(p.dir, "nginx.conf"), "-e", filepath.Join(p.dir, "error.log"), "-s", "reload").CombinedOutput()
	if err != nil {
		t.Fatalf("nginx -s reload: %v\n%s", err, out)
	}
}

// startHAProxy runs HAProxy in TCP mode in front of kpush at upstream,
// sending a PROXY protocol header on each connection: sendProxy is
// "send-proxy-v2" (as an AWS Network Load Balancer with proxy protocol v2
// enabled does) or "send-proxy" (version 1).
func startHAProxy(t *testing.T, upstream, sendProxy string) *proxyProcess {
	t.Helper()
	bin := proxyBinary(t, "haproxy")
	dir := t.TempDir()
	addr := fmt.Sprintf("127.0.0.1:%d", freeLoopbackPort(t))
	conf := strings.Join([]string{
		"global",
		"    maxconn 4096",
		"defaults",
		"    mode tcp",
		"    timeout connect 5s",
		"    timeout client 1h",
		"    timeout server 1h",
		"    timeout tunnel 1h",
		"frontend ws",
		"    bind " + addr,
		"    default_backend kpush",
		"backend kpush",
		"    server kpush1 " + upstream + " " + sendProxy,
		"",
	}, "\n")
	path := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	// -db: foreground, no daemon.
	return startProxyProcess(t, "haproxy", dir, addr, bin, "-db", "-f", path)
}

// fromIP dials from a loopback source address, so each test client can be
// a different client address behind the proxy.
func fromIP(ip string) *client.DialOptions {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 10 * time.Second}
	return &client.DialOptions{NetDial: func(ctx context.Context, network, addr string) (net.Conn, error) {
		return d.DialContext(ctx, network, addr)
	}}
}

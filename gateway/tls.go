package gateway

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"
	"time"
)

// TLSConfig is the top-level `tls` section: native wss on the listen
// address. TLS is on when CertFile is set.
type TLSConfig struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// MinVersion is "1.2" or "1.3".
	MinVersion string `yaml:"min_version"`
	// ReloadInterval is how often the files are checked for a new
	// certificate (Kubernetes secret rotation); established connections
	// keep theirs.
	ReloadInterval time.Duration `yaml:"reload_interval"`
}

// Enabled reports whether the listener serves TLS.
func (c *TLSConfig) Enabled() bool { return c.CertFile != "" }

// SetDefaults fills zero fields with their defaults.
func (c *TLSConfig) SetDefaults() {
	if c.MinVersion == "" {
		c.MinVersion = "1.2"
	}
	if c.ReloadInterval == 0 {
		c.ReloadInterval = 10 * time.Second
	}
}

// Validate reports every invalid key, named as in the YAML file.
func (c *TLSConfig) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("tls.%s: %s", key, fmt.Sprintf(format, args...)))
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		bad("key_file", "cert_file and key_file go together (both set for wss, both empty for ws)")
	}
	if _, err := tlsVersion(c.MinVersion); err != nil {
		bad("min_version", "%v", err)
	}
	if c.ReloadInterval < 10*time.Millisecond {
		bad("reload_interval", "%s is below 10ms", c.ReloadInterval)
	}
	return errors.Join(errs...)
}

func tlsVersion(s string) (uint16, error) {
	switch s {
	case "1.2":
		return tls.VersionTLS12, nil
	case "1.3":
		return tls.VersionTLS13, nil
	}
	return 0, fmt.Errorf("%q must be \"1.2\" or \"1.3\"", s)
}

// certStore holds the serving certificate and reloads it when its files
// change. GetCertificate is safe for concurrent use.
type certStore struct {
	cfg  TLSConfig
	log  *slog.Logger
	cert atomic.Pointer[tls.Certificate]
	sum  [32]byte // hash of the files the current certificate came from; owned by the reload goroutine

	onReload func(ok bool, notAfter time.Time) // metrics hook; may be nil
}

// newCertStore loads the certificate once; a missing or broken file is an
// error here, while later reload failures keep the old certificate.
func newCertStore(cfg TLSConfig, log *slog.Logger) (*certStore, error) {
	s := &certStore{cfg: cfg, log: log}
	changed, err := s.load()
	if err != nil {
		return nil, err
	}
	if !changed {
		return nil, errors.New("gateway: tls: no certificate loaded")
	}
	return s, nil
}

// load reads both files and installs the pair if it differs from the current
// one. It reports whether a new certificate was installed.
func (s *certStore) load() (bool, error) {
	certPEM, err := os.ReadFile(s.cfg.CertFile)
	if err != nil {
		return false, fmt.Errorf("gateway: tls.cert_file: %w", err)
	}
	keyPEM, err := os.ReadFile(s.cfg.KeyFile)
	if err != nil {
		return false, fmt.Errorf("gateway: tls.key_file: %w", err)
	}
	h := sha256.New()
	h.Write(certPEM)
	h.Write([]byte{0})
	h.Write(keyPEM)
	var sum [32]byte
	h.Sum(sum[:0])
	if sum == s.sum && s.cert.Load() != nil {
		return false, nil
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return false, fmt.Errorf("gateway: tls: %s and %s: %w", s.cfg.CertFile, s.cfg.KeyFile, err)
	}
	if cert.Leaf == nil {
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return false, fmt.Errorf("gateway: tls.cert_file: %w", err)
		}
	}
	s.cert.Store(&cert)
	s.sum = sum
	if s.onReload != nil {
		s.onReload(true, cert.Leaf.NotAfter)
	}
	return true, nil
}

// GetCertificate serves the current certificate to every handshake.
func (s *certStore) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return s.cert.Load(), nil
}

// NotAfter is the current certificate's expiry.
func (s *certStore) NotAfter() time.Time { return s.cert.Load().Leaf.NotAfter }

// run polls the files every ReloadInterval until ctx ends. A rotation caught
// half-written (a new certificate with the old key) fails to load and is
// retried on the next poll; the old certificate stays in service meanwhile.
func (s *certStore) run(ctx context.Context) {
	t := time.NewTicker(s.cfg.ReloadInterval)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		changed, err := s.load()
		switch {
		case err != nil:
			if !failing {
				s.log.Warn("gateway: TLS certificate reload failed; serving the previous one", "err", err)
				if s.onReload != nil {
					s.onReload(false, time.Time{})
				}
			}
			failing = true
		case changed:
			failing = false
			s.log.Info("gateway: TLS certificate reloaded", "cert_file", s.cfg.CertFile, "not_after", s.NotAfter())
		default:
			failing = false
		}
	}
}

// serverConfig is the tls.Config for the listener.
func (s *certStore) serverConfig() *tls.Config {
	min, _ := tlsVersion(s.cfg.MinVersion) // validated
	return &tls.Config{
		MinVersion:     min,
		GetCertificate: s.GetCertificate,
		// WebSocket upgrades are HTTP/1.1; offering h2 would make
		// browsers try it.
		NextProtos: []string{"http/1.1"},
	}
}

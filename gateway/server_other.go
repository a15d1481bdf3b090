//go:build !linux

package gateway

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"

	"github.com/kpush/kpush/router"
	"github.com/prometheus/client_golang/prometheus"
)

// Server is the gateway; its connection layer is built on Linux epoll.
type Server struct{}

var errNotLinux = errors.New("gateway: the epoll connection layer needs Linux; run kpush on Linux or in its container image")

// New fails on systems other than Linux.
func New(Config, *router.Router, prometheus.Registerer, *slog.Logger) (*Server, error) {
	return nil, errNotLinux
}

func (s *Server) HandleHTTP(http.Handler)                   {}
func (s *Server) SetPublicChannels(PublicChannels)          {}
func (s *Server) Ready() <-chan struct{}                    { return nil }
func (s *Server) Addr() net.Addr                            { return nil }
func (s *Server) Connections() int                          { return 0 }
func (s *Server) Draining() bool                            { return false }
func (s *Server) SetLimits(Config) error                    { return errNotLinux }
func (s *Server) Run(context.Context) error                 { return errNotLinux }
func (s *Server) Shutdown(context.Context) error            { return errNotLinux }
func (s *Server) Publish(*Message, *router.Retention) int   { return 0 }
func (s *Server) Encode(rec *router.Record) *router.Frame   { return EncodeRecord(rec) }
func (s *Server) SetReplayer(Replayer)                      {}
func (s *Server) Serve(context.Context, net.Listener) error { return errNotLinux }
func (s *Server) Err() error                                { return errNotLinux }

// PublicChannels tells which channels anonymous clients may subscribe to.
type PublicChannels interface {
	Public(channel string) bool
}

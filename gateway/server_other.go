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

// netState is the transport's half of the Server; the connection layer is
// built on Linux epoll (server_linux.go), so elsewhere it is empty and New
// fails. Sessions (session.go) build and test on every system.
type netState struct{}

var errNotLinux = errors.New("gateway: the epoll connection layer needs Linux; run kpush on Linux or in its container image")

// New fails on systems other than Linux.
func New(Config, *router.Router, prometheus.Registerer, *slog.Logger) (*Server, error) {
	return nil, errNotLinux
}

func (s *Server) HandleHTTP(http.Handler)                   {}
func (s *Server) Ready() <-chan struct{}                    { return nil }
func (s *Server) Addr() net.Addr                            { return nil }
func (s *Server) Connections() int                          { return 0 }
func (s *Server) Run(context.Context) error                 { return errNotLinux }
func (s *Server) Shutdown(context.Context) error            { return errNotLinux }
func (s *Server) Serve(context.Context, net.Listener) error { return errNotLinux }
func (s *Server) Err() error                                { return errNotLinux }

//go:build !linux

// Command kpush-bench is kpush's load generator; it needs Linux (epoll).
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "kpush-bench: needs Linux (its client connections live in epoll)")
	os.Exit(1)
}

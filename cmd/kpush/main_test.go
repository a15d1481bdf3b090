package main

import (
	"os"
	"testing"
)

// TestMain lets a test run kpush as a separate process: this test binary,
// started again with KPUSH_TEST_MAIN=1, is kpush's main with the given
// arguments (see startKpushProcess).
func TestMain(m *testing.M) {
	if os.Getenv("KPUSH_TEST_MAIN") == "1" {
		os.Exit(run(os.Args[1:]))
	}
	os.Exit(m.Run())
}

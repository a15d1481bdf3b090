package gateway

import (
	"testing"
	"unsafe"
)

// TestConnSize keeps an idle connection's struct within the 288-byte
// allocation size class it had before the delivery controls (frequency
// caps, write_delay, compression) added their state: every idle connection
// pays for each byte past it (the next class is 320).
func TestConnSize(t *testing.T) {
	if n := unsafe.Sizeof(conn{}); n > 288 {
		t.Fatalf("conn is %d bytes, past the 288-byte size class", n)
	}
}

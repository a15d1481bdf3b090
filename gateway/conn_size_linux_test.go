package gateway

import (
	"testing"
	"unsafe"
)

// TestConnSize keeps an idle connection's struct within the 240-byte
// allocation size class: every idle connection pays for each byte past it
// (the next classes are 256 and 288; it was 288 before the read state moved
// out of the idle struct).
func TestConnSize(t *testing.T) {
	if n := unsafe.Sizeof(conn{}); n > 240 {
		t.Fatalf("conn is %d bytes, past the 240-byte size class", n)
	}
}

//go:build linux

package gateway

import "testing"

// TestWorkQueueServesFlushesFirst: flushes are taken ahead of reads, a
// quarter of each batch stays for reads while any wait, and each kind keeps
// its order.
func TestWorkQueueServesFlushesFirst(t *testing.T) {
	q := newWorkQueue()
	conns := make([]*conn, 100)
	for i := range conns {
		conns[i] = &conn{fd: i}
	}
	for i := 0; i < 60; i++ {
		q.push(task{c: conns[i], kind: taskRead})
	}
	for i := 60; i < 70; i++ {
		q.push(task{c: conns[i], kind: taskFlush})
	}
	q.push(task{c: conns[70], kind: taskUnsubscribe})
	b := q.popBatch(nil, 8)
	// 10 flushes wait but 2 of 8 places are kept for reads.
	want := []int{60, 61, 62, 63, 64, 65, 0, 1}
	for i, tk := range b {
		if tk.c.fd != want[i] {
			t.Fatalf("batch 1 = %v, want fds %v", fds(b), want)
		}
	}
	b = q.popBatch(b, 8)
	if got := fds(b); len(got) != 8 || got[0] != 66 || got[3] != 69 || got[4] != 2 || got[7] != 5 {
		t.Fatalf("batch 2 = %v, want flushes 66-69 then reads 2-5", got)
	}
	// Only reads (and the unsubscribe) are left: whole batches of them, in order.
	seen := 6
	for seen < 61 {
		b = q.popBatch(b, 8)
		for _, tk := range b {
			want := seen
			if seen == 60 {
				want = 70 // the unsubscribe, pushed after the reads
			}
			if tk.c.fd != want {
				t.Fatalf("got fd %d, want %d", tk.c.fd, want)
			}
			seen++
		}
	}
	q.close()
	if b := q.popBatch(b, 8); b != nil {
		t.Fatalf("closed empty queue returned %v", fds(b))
	}
}

func fds(b []task) []int {
	var out []int
	for _, t := range b {
		out = append(out, t.c.fd)
	}
	return out
}

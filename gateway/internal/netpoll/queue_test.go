package netpoll

import "testing"

type testConn struct{ fd int }

// TestWorkQueueServesFlushesFirst: flushes are taken ahead of reads, a
// quarter of each batch stays for reads while any wait, and each kind keeps
// its order.
func TestWorkQueueServesFlushesFirst(t *testing.T) {
	q := NewWorkQueue[testConn]()
	conns := make([]*testConn, 100)
	for i := range conns {
		conns[i] = &testConn{fd: i}
	}
	for i := 0; i < 60; i++ {
		q.Push(Task[testConn]{C: conns[i], Kind: Readable})
	}
	for i := 60; i < 70; i++ {
		q.Push(Task[testConn]{C: conns[i], Kind: Flush})
	}
	q.Push(Task[testConn]{C: conns[70], Kind: Closing})
	b := q.PopBatch(nil, 8)
	// 10 flushes wait but 2 of 8 places are kept for reads.
	want := []int{60, 61, 62, 63, 64, 65, 0, 1}
	for i, tk := range b {
		if tk.C.fd != want[i] {
			t.Fatalf("batch 1 = %v, want fds %v", fds(b), want)
		}
	}
	b = q.PopBatch(b, 8)
	if got := fds(b); len(got) != 8 || got[0] != 66 || got[3] != 69 || got[4] != 2 || got[7] != 5 {
		t.Fatalf("batch 2 = %v, want flushes 66-69 then reads 2-5", got)
	}
	// Only reads (and the Closing task) are left: whole batches of them, in order.
	seen := 6
	for seen < 61 {
		b = q.PopBatch(b, 8)
		for _, tk := range b {
			want := seen
			if seen == 60 {
				want = 70 // the Closing task, pushed after the reads
			}
			if tk.C.fd != want {
				t.Fatalf("got fd %d, want %d", tk.C.fd, want)
			}
			seen++
		}
	}
	if b := q.TryPopBatch(b, 8); len(b) != 0 {
		t.Fatalf("TryPopBatch on an empty queue returned %v", fds(b))
	}
	q.Close()
	if b := q.PopBatch(b, 8); b != nil {
		t.Fatalf("closed empty queue returned %v", fds(b))
	}
}

func fds(b []Task[testConn]) []int {
	var out []int
	for _, t := range b {
		out = append(out, t.C.fd)
	}
	return out
}

// TestRegistryGenerations: a reused descriptor number answers only to the
// generation of the connection that holds it now; batches walk every
// connection once.
func TestRegistryGenerations(t *testing.T) {
	r := NewRegistry[testConn]()
	old := &testConn{fd: 5}
	g1 := r.NextGen()
	r.Add(5, g1, old)
	if r.Lookup(5, g1) != old || r.Count() != 1 {
		t.Fatalf("Lookup(5, %d) = %v, count %d", g1, r.Lookup(5, g1), r.Count())
	}
	r.Remove(5, old)
	nu := &testConn{fd: 5}
	g2 := r.NextGen()
	r.Add(5, g2, nu)
	if g2 == g1 || r.Lookup(5, g1) != nil || r.Lookup(5, g2) != nu {
		t.Fatalf("after reuse: gens %d %d, old lookup %v, new lookup %v", g1, g2, r.Lookup(5, g1), r.Lookup(5, g2))
	}
	r.Remove(5, old) // not the holder any more: no effect
	if r.Count() != 1 || r.Lookup(-1, 0) != nil || r.Lookup(1<<20, g2) != nil {
		t.Fatalf("count %d after removing a former holder", r.Count())
	}
	for fd := 2000; fd < 2100; fd++ {
		r.Add(fd, r.NextGen(), &testConn{fd: fd})
	}
	seen := 0
	batch := make([]*testConn, 0, 7)
	for next := 0; next >= 0; {
		batch, next = r.Batch(next, batch)
		seen += len(batch)
	}
	if seen != 101 || len(r.Snapshot()) != 101 || r.Count() != 101 {
		t.Fatalf("batches saw %d, snapshot %d, count %d; want 101", seen, len(r.Snapshot()), r.Count())
	}
}

//go:build linux

package gateway

import "sync"

// taskKind says what a worker does with a connection.
type taskKind uint8

const (
	taskRead        taskKind = iota + 1 // the socket is readable
	taskFlush                           // the connection has queued frames and a writable socket
	taskUnsubscribe                     // the connection is closing: leave the router
)

type task struct {
	c    *conn
	kind taskKind
}

// workQueue feeds the worker pool. It never blocks its producers: pushes
// come from epoll loops and from publishers that hold router locks. Its
// length is bounded by two tasks per connection, since a connection has at
// most one read and one flush scheduled at a time (plus one unsubscribe when
// it closes).
//
// Flushes (records and replies on their way to sockets) are served ahead of
// reads and unsubscribes, with a quarter of each batch kept for the latter
// while any wait: when thousands of connections close at once, their reads
// queue up, and the frames of the connections that stay must not wait
// behind all of them. Within each kind the order is first in, first out.
type workQueue struct {
	mu      sync.Mutex
	cond    sync.Cond
	flushes taskFIFO // guarded by mu
	others  taskFIFO // guarded by mu; reads and unsubscribes
	closed  bool     // guarded by mu
}

func newWorkQueue() *workQueue {
	q := &workQueue{}
	q.cond.L = &q.mu
	return q
}

func (q *workQueue) push(t task) {
	q.mu.Lock()
	if t.kind == taskFlush {
		q.flushes.push(t)
	} else {
		q.others.push(t)
	}
	q.mu.Unlock()
	q.cond.Signal()
}

// popBatch waits for tasks and takes up to max of them into dst. It returns
// nil once the queue is closed and empty.
func (q *workQueue) popBatch(dst []task, max int) []task {
	q.mu.Lock()
	defer q.mu.Unlock()
	for q.flushes.len()+q.others.len() == 0 {
		if q.closed {
			return nil
		}
		q.cond.Wait()
	}
	dst = dst[:0]
	reserve := 0
	if q.others.len() > 0 {
		reserve = (max + 3) / 4
	}
	dst = q.flushes.take(dst, max-reserve)
	dst = q.others.take(dst, max-len(dst))
	dst = q.flushes.take(dst, max-len(dst))
	if q.flushes.len()+q.others.len() > 0 {
		q.cond.Signal() // more work: wake another worker
	}
	return dst
}

func (q *workQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	q.cond.Broadcast()
}

// taskFIFO is a first-in-first-out list of tasks.
type taskFIFO struct {
	tasks []task // tasks[head:] are pending
	head  int
}

func (f *taskFIFO) len() int { return len(f.tasks) - f.head }

func (f *taskFIFO) push(t task) { f.tasks = append(f.tasks, t) }

// take appends up to n tasks to dst.
func (f *taskFIFO) take(dst []task, n int) []task {
	n = min(n, f.len())
	if n <= 0 {
		return dst
	}
	dst = append(dst, f.tasks[f.head:f.head+n]...)
	clear(f.tasks[f.head : f.head+n])
	f.head += n
	switch {
	case f.head == len(f.tasks):
		f.tasks, f.head = f.tasks[:0], 0
	case f.head > len(f.tasks)/2:
		// Compact so a list that never empties does not grow forever.
		k := copy(f.tasks, f.tasks[f.head:])
		f.tasks, f.head = f.tasks[:k], 0
	}
	return dst
}

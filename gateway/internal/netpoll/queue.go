package netpoll

import "sync"

// Kind says what a worker does with a connection.
type Kind uint8

const (
	Readable Kind = iota + 1 // the socket is readable
	Flush                    // the connection has queued bytes and a writable socket
	Closing                  // the connection is closing: release what it holds above the transport
)

// Task is one piece of work for a worker: a connection and what to do.
type Task[T any] struct {
	C    *T
	Kind Kind
}

// WorkQueue feeds the worker pool. It never blocks its producers: pushes
// come from epoll loops and from publishers that hold router locks. Its
// length is bounded by two tasks per connection, since a connection has at
// most one read and one flush scheduled at a time (plus one Closing task
// when it closes).
//
// Flushes (records and replies on their way to sockets) are served ahead of
// reads and Closing tasks, with a quarter of each batch kept for the latter
// while any wait: when thousands of connections close at once, their reads
// queue up, and the frames of the connections that stay must not wait
// behind all of them. Within each kind the order is first in, first out.
type WorkQueue[T any] struct {
	mu      sync.Mutex
	cond    sync.Cond
	flushes fifo[T] // guarded by mu
	others  fifo[T] // guarded by mu; reads and Closing tasks
	closed  bool    // guarded by mu
}

func NewWorkQueue[T any]() *WorkQueue[T] {
	q := &WorkQueue[T]{}
	q.cond.L = &q.mu
	return q
}

func (q *WorkQueue[T]) Push(t Task[T]) {
	q.mu.Lock()
	if t.Kind == Flush {
		q.flushes.push(t)
	} else {
		q.others.push(t)
	}
	q.mu.Unlock()
	q.cond.Signal()
}

// PopBatch waits for tasks and takes up to max of them into dst. It returns
// nil once the queue is closed and empty.
func (q *WorkQueue[T]) PopBatch(dst []Task[T], max int) []Task[T] {
	q.mu.Lock()
	defer q.mu.Unlock()
	for q.flushes.len()+q.others.len() == 0 {
		if q.closed {
			return nil
		}
		q.cond.Wait()
	}
	return q.takeLocked(dst, max)
}

// TryPopBatch is PopBatch without waiting: it returns dst[:0] when no task
// is queued (benchmarks run the worker's part themselves).
func (q *WorkQueue[T]) TryPopBatch(dst []Task[T], max int) []Task[T] {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.flushes.len()+q.others.len() == 0 {
		return dst[:0]
	}
	return q.takeLocked(dst, max)
}

// takeLocked takes up to max tasks into dst, flushes first with a quarter
// kept for the others while any wait. Caller holds q.mu.
func (q *WorkQueue[T]) takeLocked(dst []Task[T], max int) []Task[T] {
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

// Close wakes every waiting worker; PopBatch returns nil once the queue is
// empty.
func (q *WorkQueue[T]) Close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	q.cond.Broadcast()
}

// fifo is a first-in-first-out list of tasks.
type fifo[T any] struct {
	tasks []Task[T] // tasks[head:] are pending
	head  int
}

func (f *fifo[T]) len() int { return len(f.tasks) - f.head }

func (f *fifo[T]) push(t Task[T]) { f.tasks = append(f.tasks, t) }

// take appends up to n tasks to dst.
func (f *fifo[T]) take(dst []Task[T], n int) []Task[T] {
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

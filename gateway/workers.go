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

// workQueue is an unbounded FIFO of tasks feeding the worker pool. It never
// blocks its producers: pushes come from epoll loops and from publishers that
// hold router locks. Its length is bounded by two tasks per connection, since
// a connection has at most one read and one flush scheduled at a time (plus
// one unsubscribe when it closes).
type workQueue struct {
	mu     sync.Mutex
	cond   sync.Cond
	tasks  []task // guarded by mu; tasks[head:] are pending
	head   int    // guarded by mu
	closed bool   // guarded by mu
}

func newWorkQueue() *workQueue {
	q := &workQueue{}
	q.cond.L = &q.mu
	return q
}

func (q *workQueue) push(t task) {
	q.mu.Lock()
	q.tasks = append(q.tasks, t)
	q.mu.Unlock()
	q.cond.Signal()
}

// popBatch waits for tasks and takes up to max of them into dst. It returns
// nil once the queue is closed and empty.
func (q *workQueue) popBatch(dst []task, max int) []task {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.tasks) == q.head {
		if q.closed {
			return nil
		}
		q.cond.Wait()
	}
	n := min(len(q.tasks)-q.head, max)
	dst = append(dst[:0], q.tasks[q.head:q.head+n]...)
	clear(q.tasks[q.head : q.head+n])
	q.head += n
	switch {
	case q.head == len(q.tasks):
		q.tasks, q.head = q.tasks[:0], 0
	case q.head > len(q.tasks)/2:
		// Compact so a queue that never empties does not grow forever.
		k := copy(q.tasks, q.tasks[q.head:])
		q.tasks, q.head = q.tasks[:k], 0
	}
	if q.head < len(q.tasks) {
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

package consumer

// SetRoutes replaces the routes of a running (or not yet running) Consumer.
// routes are compiled (CompileRoutes) and not kept; invalid routes change
// nothing. Safe to call concurrently with Run and with itself.
//
// What is retained of channels: a route that stays as it was (same topic,
// channel template, snapshot and history keys) keeps its router.Retention,
// so its channels keep their snapshots and histories; the retained state
// of a route removed or changed is dropped (Destination.DropRetention)
// once the new routes are in force. Every record carries its route's
// policy, so a record of the old routes still being delivered is published
// with the policy it was read under.
//
// What changes, and from which offset:
//   - A route added for a topic already being read applies from the
//     topic's current position: each partition reader uses the new routes
//     from its next fetch. Nothing already read is read again, so clients
//     of the routes that stay get no duplicates.
//   - A topic that becomes routed is read like a topic at start-up: its
//     partitions that exist at the next metadata read (which SetRoutes
//     triggers at once) start at kafka.start (latest: only records
//     produced from then on); partitions and topics that appear later
//     start at their first offset.
//   - A topic no longer routed has its readers stopped (a fetch already
//     returned is still delivered with the routes it started with). If it
//     is routed again before they have stopped, its new readers start once
//     they have.
func (c *Consumer) SetRoutes(routes []Route) error {
	t, err := CompileRoutes(routes)
	if err != nil {
		return err
	}
	c.routesMu.Lock()
	defer c.routesMu.Unlock()
	var added, removed []string
	c.mu.Lock()
	old := c.table.Load()
	gone := t.inherit(old)
	c.table.Store(t)
	for _, topic := range t.topics {
		if _, ok := old.byTopic[topic]; !ok {
			added = append(added, topic)
			c.fresh[topic] = true
		}
	}
	for _, topic := range old.topics {
		if _, ok := t.byTopic[topic]; !ok {
			removed = append(removed, topic)
			delete(c.fresh, topic)
		}
	}
	c.useTopicsLocked(t.topics)
	for tp, ps := range c.partitions {
		if _, ok := t.byTopic[tp.topic]; !ok {
			ps.cancel()
			delete(c.partitions, tp)
			c.stopping[tp] = ps
		}
	}
	c.mu.Unlock()
	if len(gone) > 0 {
		c.dest.DropRetention(gone...)
	}
	if len(added) > 0 || len(removed) > 0 {
		c.log.Info("consumer: routed topics changed", "added", added, "removed", removed, "topics", t.topics)
	}
	c.poke()
	return nil
}

// Public reports whether a route in force marked public: true can produce
// channel ch: anonymous clients may subscribe to it. It satisfies the
// gateway's PublicChannels and is safe for concurrent use.
func (c *Consumer) Public(ch string) bool { return c.table.Load().Public(ch) }

// readerStopped is called when a partition reader returns.
func (c *Consumer) readerStopped(tp topicPartition, ps *partState) {
	c.mu.Lock()
	wasStopping := c.stopping[tp] == ps
	if wasStopping {
		delete(c.stopping, tp)
	}
	c.mu.Unlock()
	if wasStopping {
		c.poke() // its topic may be routed again and waiting for it
	}
}

// poke asks Run to read metadata now.
func (c *Consumer) poke() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

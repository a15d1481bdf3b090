// Package feed simulates a market feed: JSON price ticks for a set of
// symbols, produced to Kafka keyed by symbol. `kpush -dev` and the
// standalone `kpush-feed` both run it.
package feed

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/segmentio/kafka-go"
)

// DefaultSymbols are the symbols simulated when none are given.
var DefaultSymbols = []string{"AAPL", "MSFT", "GOOG", "AMZN", "TSLA", "NVDA", "META", "NFLX", "AMD", "INTC"}

// Config says what to produce.
type Config struct {
	Brokers []string
	Topic   string
	Symbols []string
	Rate    float64 // records per second over all symbols
}

// Tick is one simulated quote; it is encoded by hand in Append to keep the
// producer cheap.
type Tick struct {
	Sym   string
	Price float64
	Bid   float64
	Ask   float64
	Size  int
	Seq   int64 // increases by one per symbol
	TS    int64 // Unix ms
}

// Append encodes t as JSON.
func (t *Tick) Append(b []byte) []byte {
	b = append(b, `{"sym":"`...)
	b = append(b, t.Sym...)
	b = append(b, `","price":`...)
	b = strconv.AppendFloat(b, t.Price, 'f', 2, 64)
	b = append(b, `,"bid":`...)
	b = strconv.AppendFloat(b, t.Bid, 'f', 2, 64)
	b = append(b, `,"ask":`...)
	b = strconv.AppendFloat(b, t.Ask, 'f', 2, 64)
	b = append(b, `,"size":`...)
	b = strconv.AppendInt(b, int64(t.Size), 10)
	b = append(b, `,"seq":`...)
	b = strconv.AppendInt(b, t.Seq, 10)
	b = append(b, `,"ts":`...)
	b = strconv.AppendInt(b, t.TS, 10)
	return append(b, '}')
}

// Simulator walks prices randomly.
type Simulator struct {
	syms   []string
	prices []float64
	seqs   []int64 // per symbol, so a client can spot gaps on one symbol
	rng    *rand.Rand
}

// NewSimulator starts every symbol at a plausible price.
func NewSimulator(symbols []string, seed uint64) *Simulator {
	s := &Simulator{syms: symbols, prices: make([]float64, len(symbols)), seqs: make([]int64, len(symbols)), rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
	for i := range symbols {
		s.prices[i] = 50 + s.rng.Float64()*400
	}
	return s
}

// Next returns the next tick of a random symbol.
func (s *Simulator) Next(now time.Time) Tick {
	i := s.rng.IntN(len(s.syms))
	p := s.prices[i] * (1 + s.rng.NormFloat64()*0.0008)
	p = math.Max(p, 1)
	s.prices[i] = p
	s.seqs[i]++
	spread := math.Max(0.01, math.Round(p*0.0002*100)/100)
	return Tick{
		Sym:   s.syms[i],
		Price: math.Round(p*100) / 100,
		Bid:   math.Round((p-spread/2)*100) / 100,
		Ask:   math.Round((p+spread/2)*100) / 100,
		Size:  (1 + s.rng.IntN(20)) * 100,
		Seq:   s.seqs[i],
		TS:    now.UnixMilli(),
	}
}

// Run produces ticks at cfg.Rate until ctx ends.
func Run(ctx context.Context, cfg Config, log *slog.Logger) error {
	if cfg.Rate <= 0 {
		return fmt.Errorf("feed: rate must be positive, got %v", cfg.Rate)
	}
	if len(cfg.Symbols) == 0 {
		cfg.Symbols = DefaultSymbols
	}
	w := &kafka.Writer{
		Addr:         kafka.TCP(cfg.Brokers...),
		Topic:        cfg.Topic,
		Balancer:     &kafka.Hash{},
		BatchTimeout: 2 * time.Millisecond,
		RequiredAcks: kafka.RequireOne,
		Async:        true,
		Completion: func(_ []kafka.Message, err error) {
			if err != nil {
				log.Warn("feed: produce failed", "err", err)
			}
		},
	}
	defer w.Close()
	sim := NewSimulator(cfg.Symbols, uint64(time.Now().UnixNano()))
	// Each tick produces however many records are due by then, so the rate
	// holds on average even when ticks are late or dropped under load.
	interval := max(time.Duration(float64(time.Second)/cfg.Rate), time.Millisecond)
	t := time.NewTicker(interval)
	defer t.Stop()
	log.Info("feed producing", "brokers", cfg.Brokers, "topic", cfg.Topic, "symbols", len(cfg.Symbols), "rate", cfg.Rate)
	start := time.Now()
	var sent int64
	var msgs []kafka.Message
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-t.C:
			due := int64(now.Sub(start).Seconds()*cfg.Rate) - sent
			if due <= 0 {
				continue
			}
			msgs = msgs[:0]
			for range due {
				tick := sim.Next(now)
				msgs = append(msgs, kafka.Message{Key: []byte(tick.Sym), Value: tick.Append(nil), Time: now})
			}
			sent += due
			if err := w.WriteMessages(ctx, msgs...); err != nil && ctx.Err() == nil {
				log.Warn("feed: produce failed", "err", err)
			}
		}
	}
}

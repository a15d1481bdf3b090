package feed

import (
	"encoding/json"
	"testing"
	"time"
)

func TestSimulatorTicks(t *testing.T) {
	sim := NewSimulator([]string{"AAPL", "MSFT", "GOOG"}, 1)
	seq := map[string]int64{}
	now := time.UnixMilli(1764000000123)
	for i := 0; i < 1000; i++ {
		tick := sim.Next(now)
		b := tick.Append(nil)
		var got struct {
			Sym   string  `json:"sym"`
			Price float64 `json:"price"`
			Bid   float64 `json:"bid"`
			Ask   float64 `json:"ask"`
			Size  int     `json:"size"`
			Seq   int64   `json:"seq"`
			TS    int64   `json:"ts"`
		}
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatalf("tick %s is not JSON: %v", b, err)
		}
		if got.Seq != seq[got.Sym]+1 {
			t.Fatalf("%s seq %d after %d: per-symbol sequence must have no gaps", got.Sym, got.Seq, seq[got.Sym])
		}
		seq[got.Sym] = got.Seq
		if got.Price <= 0 || got.Bid > got.Ask || got.Size <= 0 || got.TS != now.UnixMilli() {
			t.Fatalf("implausible tick %s", b)
		}
	}
	if len(seq) != 3 {
		t.Fatalf("ticks covered %d symbols, want 3", len(seq))
	}
}

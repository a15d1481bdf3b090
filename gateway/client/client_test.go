package client

import (
	"fmt"
	"testing"
)

// TestClientDropsDuplicatesAndTracksPositions feeds frames as a server
// would after a resume that overlaps what the client has.
func TestClientDropsDuplicatesAndTracksPositions(t *testing.T) {
	var got []string
	var verdicts []string
	c, err := NewClient(Options{
		URLs:        []string{"ws://127.0.0.1:1/ws"},
		OnMessage:   func(f *Frame) { got = append(got, fmt.Sprintf("%s/%d/%d", f.Ch, f.P, f.O)) },
		OnRecovered: func(ch string, ok bool) { verdicts = append(verdicts, fmt.Sprintf("%s=%v", ch, ok)) },
	})
	if err != nil {
		t.Fatal(err)
	}
	c.SetPositions(map[string]map[int32]int64{"a": {0: 10}})
	for _, f := range []*Frame{
		{Op: "msg", Ch: "a", P: 0, O: 9},  // already had
		{Op: "msg", Ch: "a", P: 0, O: 10}, // already had
		{Op: "msg", Ch: "a", P: 0, O: 11},
		{Op: "msg", Ch: "a", P: 1, O: 3}, // another partition: its own position
		{Op: "msg", Ch: "b", P: 0, O: 5},
		{Op: "msg", Ch: "a", P: 0, O: 11}, // repeated
		{Op: "ok", ID: 1, Recovered: map[string]bool{"b": false, "a": true}},
	} {
		c.handle(f)
	}
	if want := "[a/0/11 a/1/3 b/0/5]"; fmt.Sprint(got) != want {
		t.Fatalf("delivered %v, want %s", got, want)
	}
	if want := "[a=true b=false]"; fmt.Sprint(verdicts) != want {
		t.Fatalf("verdicts %v, want %s", verdicts, want)
	}
	pos := c.Positions()
	if pos["a"][0] != 11 || pos["a"][1] != 3 || pos["b"][0] != 5 {
		t.Fatalf("positions %v", pos)
	}
	if st := c.Stats(); st.Messages != 3 || st.Duplicates != 3 {
		t.Fatalf("stats %+v, want 3 messages and 3 duplicates", st)
	}
}

func TestNewClientNeedsURL(t *testing.T) {
	if _, err := NewClient(Options{}); err == nil {
		t.Fatal("a client without URL was accepted")
	}
}

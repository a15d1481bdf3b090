package main

import (
	"context"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/kpush/kpush/consumer"
	"github.com/kpush/kpush/gateway/client"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// deleteTopic deletes topic and waits until the broker's metadata no
// longer lists it.
func (k *testKafka) deleteTopic(t testing.TB, topic string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req := kmsg.NewPtrDeleteTopicsRequest()
	rt := kmsg.NewDeleteTopicsRequestTopic()
	rt.Topic = kmsg.StringPtr(topic)
	req.Topics = append(req.Topics, rt)
	req.TopicNames = []string{topic}
	req.TimeoutMillis = 10000
	resp, err := req.RequestWith(ctx, k.cl)
	if err != nil {
		t.Fatalf("delete topic %s: %v", topic, err)
	}
	for _, tr := range resp.Topics {
		if tr.ErrorCode != 0 {
			t.Fatalf("delete topic %s: error code %d", topic, tr.ErrorCode)
		}
	}
	waitFor(t, 30*time.Second, "the deleted topic to leave the metadata", func() bool {
		mreq := kmsg.NewPtrMetadataRequest()
		mt := kmsg.NewMetadataRequestTopic()
		mt.Topic = kmsg.StringPtr(topic)
		mreq.Topics = append(mreq.Topics, mt)
		mresp, err := mreq.RequestWith(ctx, k.cl)
		return err == nil && len(mresp.Topics) == 1 && mresp.Topics[0].ErrorCode == 3 // UNKNOWN_TOPIC_OR_PARTITION
	})
}

// recreateTopic creates topic again once the broker has finished deleting
// it (until then creating it fails).
func (k *testKafka) recreateTopic(t testing.TB, topic string, partitions int32) {
	t.Helper()
	waitFor(t, 60*time.Second, "the topic to be created again", func() bool {
		req := kmsg.NewPtrCreateTopicsRequest()
		rt := kmsg.NewCreateTopicsRequestTopic()
		rt.Topic = topic
		rt.NumPartitions = partitions
		rt.ReplicationFactor = 1
		req.Topics = append(req.Topics, rt)
		req.TimeoutMillis = 10000
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		resp, err := req.RequestWith(ctx, k.cl)
		return err == nil && len(resp.Topics) == 1 && resp.Topics[0].ErrorCode == 0
	})
	k.cl.ForceMetadataRefresh()
}

// TestRealKafkaTopicRecreated: a routed topic is deleted and created again
// under the same name while clients are subscribed. kpush keeps them
// connected, shows the deleted topic in its metrics and status without
// leaving /readyz, reads the new topic from its first offset with the first
// record marked "reset":true, counts the reset, and answers recovered:false
// to resumes from positions of the old log (which the new one reuses).
func TestRealKafkaTopicRecreated(t *testing.T) {
	k := startRealKafka(t)
	topic := k.topic(t, "recreate", 1)
	// A second routed topic on the same broker, fetched in the same
	// requests: the deletion of the first must not hold it up.
	other := k.topic(t, "stays", 1)
	app := startApp(t, k.testKafka, []consumer.Route{
		{Topic: topic, Channel: "rz", Format: consumer.FormatJSON},
		{Topic: other, Channel: "st", Format: consumer.FormatJSON},
	}, nil)
	live := dial(t, app.wsURL)
	live.subscribe(t, "rz")
	bystander := dial(t, app.wsURL)
	bystander.subscribe(t, "st")
	for i, v := range []string{`{"old":0}`, `{"old":1}`, `{"old":2}`} {
		k.produce(t, rec(topic, 0, "", v))
		if f := live.next(t, 10*time.Second); f.O != int64(i) || string(f.Data) != v || f.Reset {
			t.Fatalf("old record %d: %+v", i, f)
		}
	}

	k.deleteTopic(t, topic)
	k.produce(t, rec(other, 0, "", `{"during":"delete"}`))
	if f := bystander.next(t, 10*time.Second); string(f.Data) != `{"during":"delete"}` {
		t.Fatalf("the other topic's record while one was deleted: %+v", f)
	}
	waitFor(t, 30*time.Second, "kpush to see the topic deleted", func() bool {
		return app.metric(t, "kpush_consumer_partitions", `state="deleted"`) == 1
	})
	if st := httpStatus(app.adminURL + "/readyz"); st != 200 {
		t.Errorf("/readyz = %d with a routed topic deleted, want 200 (a shared Kafka fault is not the pod's)", st)
	}
	live.expectNoMsg(t) // still connected
	if st := adminStatus(t, app.adminURL); len(st.NotReading) != 1 || st.NotReading[0].State != consumer.StatusDeleted || st.NotReading[0].Topic != topic {
		t.Errorf("/status with the topic deleted lists %+v, want its partition in state deleted", st.NotReading)
	}

	k.recreateTopic(t, topic, 1)
	// A new producer: the test's shared one holds the old topic's id.
	fresh := startKafka(t)
	var lastErr error
	waitFor(t, 30*time.Second, "a produce to the new topic", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		// Refused before anything is written (the topic not yet known
		// everywhere), so retrying is safe.
		if lastErr = fresh.cl.ProduceSync(ctx, rec(topic, 0, "", `{"new":0}`), rec(topic, 0, "", `{"new":1}`)).FirstErr(); lastErr != nil {
			t.Logf("produce to the new topic: %v", lastErr)
			fresh.cl.ForceMetadataRefresh()
			return false
		}
		return true
	})
	for i, v := range []string{`{"new":0}`, `{"new":1}`} {
		f := live.next(t, 30*time.Second)
		if f.O != int64(i) || string(f.Data) != v || f.Reset != (i == 0) {
			t.Fatalf("new record %d: %+v (reset %v), want offset %d %s, reset only on the first", i, f, f.Reset, i, v)
		}
	}
	live.expectNoMsg(t)
	if got := app.metric(t, "kpush_consumer_resets_total", `reason="recreated"`); got != 1 {
		t.Errorf(`kpush_consumer_resets_total{reason="recreated"} = %v, want 1`, got)
	}

	// Positions from the old log: offset 1 now names {"new":1}, a record
	// the holder never saw, and the new offset 0 lies before it.
	for _, after := range []int64{2, 0} {
		c := dial(t, app.wsURL)
		id, err := c.Send(&client.Request{Op: "subscribe", Channels: []string{"rz"}, Since: since("rz", 0, after)})
		if err != nil {
			t.Fatal(err)
		}
		_, _, reply := c.resumeReply(t, id, 0)
		if reply.Op != "ok" || reply.Recovered["rz"] {
			t.Fatalf("resume after old offset %d: %+v, want ok with rz not recovered", after, reply)
		}
	}
	if got := app.metric(t, "kpush_consumer_replays_total", `result="reset"`); got != 2 {
		t.Errorf(`kpush_consumer_replays_total{result="reset"} = %v, want 2`, got)
	}
}

// adminStatus reads the admin server's /status.
func adminStatus(t testing.TB, adminURL string) *statusReport {
	t.Helper()
	resp, err := http.Get(adminURL + "/status")
	if err != nil {
		t.Fatalf("/status: %v", err)
	}
	defer resp.Body.Close()
	var s statusReport
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		t.Fatalf("/status: %v", err)
	}
	return &s
}

package storechoice

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/virtufin/websocketmanager/eventlog"
	"github.com/virtufin/websocketmanager/internal/embedded"
	"github.com/virtufin/websocketmanager/internal/state"
	"github.com/virtufin/websocketmanager/projections"
	"github.com/virtufin/websocketmanager/schemas"
)

// engine opens one of the two stores in a directory.
type engine struct {
	name string
	open func(dir string) (state.Store, error)
}

func engines() []engine {
	return []engine{
		{"bbolt", func(dir string) (state.Store, error) { return embedded.Open(dir, embedded.Options{}) }},
		{"pebble", func(dir string) (state.Store, error) { return OpenPebble(dir, PebbleOptions{}) }},
		{"pebble-stock", func(dir string) (state.Store, error) { return OpenPebble(dir, PebbleOptions{Stock: true}) }},
	}
}

const (
	benchInstance    = "pod-bench"
	benchIncarnation = "0190f3a2-7c1e-7b3a-9f6e-2d1c0b9a8e7f"
	benchUsers       = 1024 // distinct users the connections belong to
	eventPool        = 256  // distinct encoded events, reused in turn
)

// workload writes what a Writer and the Projector write for a batch of
// connected events: the events, the stream head and three view keys per
// event. The view keys are the connection entry, the instance shard and the
// user index, read first and then written back conditional on their ETags.
type workload struct {
	stream string
	events [][]byte
	seq    uint64 // last event sequence written
	conn   uint64 // connections opened so far

	connValue, shardValue, userValue []byte
}

func newWorkload(tb testing.TB) *workload {
	tb.Helper()
	w := &workload{stream: eventlog.StreamName(benchInstance, benchIncarnation)}
	castagnoli := crc32.MakeTable(crc32.Castagnoli)
	at := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	for i := range eventPool {
		d := schemas.Connected{
			ConnectionID: connID(uint64(i)), InstanceID: benchInstance, Incarnation: benchIncarnation,
			UserID: userID(uint64(i)), RemoteAddr: "10.1.2.3:54321", UserAgent: "Mozilla/5.0 (X11; Linux x86_64)",
			Subprotocol: "", ConnectedAt: at.Add(time.Duration(i) * time.Millisecond),
		}
		ev, err := schemas.NewConnected(schemas.Envelope{InstanceID: benchInstance, Time: d.ConnectedAt}, d)
		if err != nil {
			tb.Fatal(err)
		}
		ev.SetExtension(schemas.SequenceExtension, schemas.FormatSequence(uint64(i+1)))
		body, err := ev.MarshalJSON()
		if err != nil {
			tb.Fatal(err)
		}
		// The stored record is the JSON behind a checksum, as the log keeps it.
		w.events = append(w.events, fmt.Appendf(nil, "%08x %s", crc32.Checksum(body, castagnoli), body))
	}

	w.connValue = mustJSON(tb, projections.Connection{
		ConnectionID: connID(0), InstanceID: benchInstance, Incarnation: benchIncarnation, UserID: userID(0),
		RemoteAddr: "10.1.2.3:54321", UserAgent: "Mozilla/5.0 (X11; Linux x86_64)", ConnectedAt: at,
	})
	shard := projections.Shard{Connections: map[string]string{}}
	for i := range 4 {
		shard.Connections[connID(uint64(i))] = benchIncarnation
	}
	w.shardValue = mustJSON(tb, shard)
	w.userValue = mustJSON(tb, projections.UserIndex{Connections: map[string]string{connID(0): benchInstance}})
	return w
}

func mustJSON(tb testing.TB, v any) []byte {
	tb.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

func connID(n uint64) string { return fmt.Sprintf("0190f3a2-0000-7000-8000-%012d", n) }
func userID(n uint64) string { return fmt.Sprintf("user-%04d", n%benchUsers) }

func (w *workload) eventKey(seq uint64) string {
	return eventlog.KeyPrefix + "streams/" + w.stream + "/events/" + schemas.FormatSequence(seq)
}

func (w *workload) headKey() string { return eventlog.KeyPrefix + "streams/" + w.stream + "/head" }

// avgEventSize is the mean size of the stored event records.
func (w *workload) avgEventSize() float64 {
	total := 0
	for _, e := range w.events {
		total += len(e)
	}
	return float64(total) / float64(len(w.events))
}

// commit appends n events the way one group commit does: one bulk read of
// the view keys they touch, then one durable transaction with the events,
// the head and every view key.
func (w *workload) commit(ctx context.Context, st state.Store, n int) error {
	keys := make([]string, 0, 3*n)
	values := make([][]byte, 0, 3*n)
	seen := make(map[string]bool, 3*n)
	add := func(key string, value []byte) {
		if !seen[key] {
			seen[key] = true
			keys = append(keys, key)
			values = append(values, value)
		}
	}
	for range n {
		w.conn++
		c := connID(w.conn)
		add(projections.ConnectionKey(c), w.connValue)
		add(projections.ShardKey(benchInstance, projections.ShardOf(c)), w.shardValue)
		add(projections.UserKey(userID(w.conn)), w.userValue)
	}

	items, err := st.BulkGet(ctx, keys)
	if err != nil {
		return err
	}

	ops := make([]state.Op, 0, n+1+len(keys))
	for range n {
		w.seq++
		ops = append(ops, state.Op{Kind: state.Upsert, Key: w.eventKey(w.seq), Value: w.events[w.seq%eventPool]})
	}
	head := []byte(`{"seq":` + fmt.Sprint(w.seq) + `}`)
	ops = append(ops, state.Op{Kind: state.Upsert, Key: w.headKey(), Value: head})
	for i, it := range items {
		ops = append(ops, state.Op{
			Kind: state.Upsert, Key: it.Key, Value: values[i],
			ETag: it.ETag, MustNotExist: !it.Exists(),
		})
	}
	return st.Transact(ctx, ops)
}

// fill appends total events in commits of batch events.
func (w *workload) fill(ctx context.Context, st state.Store, total, batch int) error {
	for total > 0 {
		n := min(batch, total)
		if err := w.commit(ctx, st, n); err != nil {
			return err
		}
		total -= n
	}
	return nil
}

// footprint sums the sizes of the files under dir, both by file length and by
// blocks allocated on disk.
func footprint(dir string) (apparent, allocated int64, files int, err error) {
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, err := os.Stat(path)
		if err != nil {
			return err
		}
		files++
		apparent += info.Size()
		if st, ok := info.Sys().(*syscall.Stat_t); ok {
			allocated += st.Blocks * 512
		}
		return nil
	})
	return apparent, allocated, files, err
}

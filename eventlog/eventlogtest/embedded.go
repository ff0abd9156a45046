package eventlogtest

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/virtufin/websocketmanager/internal/embedded"
	"github.com/virtufin/websocketmanager/internal/state"
)

// Embedded is the Factory of the embedded backend: an empty bbolt store in a
// temporary directory, with fsync on as in production.
func Embedded(t *testing.T) Backend {
	t.Helper()
	dir := t.TempDir()
	current := OpenEmbedded(t, dir)

	reopen := func(t *testing.T) state.Store {
		t.Helper()
		if err := current.Close(); err != nil {
			t.Fatalf("close embedded store: %v", err)
		}
		current = OpenEmbedded(t, dir)
		return current
	}

	// bbolt fsyncs every write transaction before Update returns, so the file
	// on disk holds exactly what a crash would leave. A copy of it, taken
	// while no transaction is in flight, serves as the data directory after
	// the crash. The running store keeps its lock on the original.
	crash := func(t *testing.T) state.Store {
		t.Helper()
		raw, err := os.ReadFile(filepath.Join(dir, embedded.FileName))
		if err != nil {
			t.Fatalf("copy store file: %v", err)
		}
		after := t.TempDir()
		if err := os.WriteFile(filepath.Join(after, embedded.FileName), raw, 0o640); err != nil {
			t.Fatalf("copy store file: %v", err)
		}
		return OpenEmbedded(t, after)
	}

	return Backend{Store: current, Reopen: reopen, Crash: crash}
}

// OpenEmbedded opens the embedded store in dir for writing and closes it when
// the test ends.
func OpenEmbedded(t testing.TB, dir string) *embedded.Store {
	t.Helper()
	store, err := embedded.Open(dir, embedded.Options{})
	if err != nil {
		t.Fatalf("open embedded store in %s: %v", dir, err)
	}
	t.Cleanup(func() { store.Close() })
	return store
}

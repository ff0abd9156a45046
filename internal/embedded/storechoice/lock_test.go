package storechoice

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/virtufin/websocketmanager/internal/embedded"
	"github.com/virtufin/websocketmanager/internal/state"
)

// Environment of the child process that TestSecondProcess starts.
const (
	envDir    = "STORECHOICE_LOCK_DIR"
	envEngine = "STORECHOICE_LOCK_ENGINE"
	envMode   = "STORECHOICE_LOCK_MODE"
)

func openMode(engine, dir string, readOnly bool) (state.Store, error) {
	if engine == "bbolt" {
		return embedded.Open(dir, embedded.Options{ReadOnly: readOnly, LockTimeout: 200 * time.Millisecond})
	}
	return OpenPebble(dir, PebbleOptions{ReadOnly: readOnly})
}

// TestLockChild is the second process of TestSecondProcess. Run on its own,
// it skips.
func TestLockChild(t *testing.T) {
	dir := os.Getenv(envDir)
	if dir == "" {
		t.Skip("runs only as the child of TestSecondProcess")
	}
	st, err := openMode(os.Getenv(envEngine), dir, os.Getenv(envMode) == "read-only")
	if err != nil {
		fmt.Printf("RESULT rejected %v\n", err)
		return
	}
	st.Close()
	fmt.Println("RESULT opened")
}

// TestSecondProcess records what each library does when a second process
// opens a store that another process holds.
func TestSecondProcess(t *testing.T) {
	tests := []struct {
		engine      string
		held, child string // "writer" or "read-only"
		want        string
	}{
		{"bbolt", "writer", "writer", "rejected"},
		{"bbolt", "writer", "read-only", "rejected"},
		{"bbolt", "read-only", "read-only", "opened"},
		{"bbolt", "read-only", "writer", "rejected"},
		{"pebble", "writer", "writer", "rejected"},
		{"pebble", "writer", "read-only", "rejected"},
		{"pebble", "read-only", "read-only", "rejected"},
		{"pebble", "read-only", "writer", "rejected"},
	}
	for _, tt := range tests {
		t.Run(tt.engine+"/"+tt.held+"/"+tt.child, func(t *testing.T) {
			dir := t.TempDir()
			st, err := openMode(tt.engine, dir, false)
			if err != nil {
				t.Fatal(err)
			}
			if tt.held == "read-only" {
				st.Close()
				if st, err = openMode(tt.engine, dir, true); err != nil {
					t.Fatal(err)
				}
			}
			defer st.Close()

			cmd := exec.Command(os.Args[0], "-test.run=^TestLockChild$", "-test.v")
			cmd.Env = append(os.Environ(), envDir+"="+dir, envEngine+"="+tt.engine, envMode+"="+tt.child)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("child: %v\n%s", err, out)
			}
			_, rest, ok := strings.Cut(string(out), "RESULT ")
			if !ok {
				t.Fatalf("child printed no result:\n%s", out)
			}
			line, _, _ := strings.Cut(rest, "\n")
			got, reason, _ := strings.Cut(line, " ")
			t.Logf("%s %s", got, reason)
			if got != tt.want {
				t.Errorf("second process opening %s as %s while one holds it as %s: got %s, want %s",
					tt.engine, tt.child, tt.held, got, tt.want)
			}
		})
	}
}

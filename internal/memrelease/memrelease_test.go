package memrelease

import (
	"bytes"
	"context"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

const mib = 1 << 20

func testConfig() Config {
	return Config{Quiet: 3 * time.Second, QuietRate: mib, MinFree: 32 * mib, Interval: time.Second}
}

// feed gives d one sample a second, allocating alloc[i] bytes in second i
// with free[i] bytes free, and returns the seconds at which it released.
func feed(d *decider, alloc, free []uint64) []int {
	var released []int
	var total uint64
	for i := range alloc {
		total += alloc[i]
		if d.observe(Sample{At: time.Duration(i) * time.Second, Allocated: total, Free: free[i]}) {
			released = append(released, i)
			d.released(total)
		}
	}
	return released
}

func TestDeciderReleasesAfterQuietBurst(t *testing.T) {
	d := &decider{cfg: testConfig()}
	// A burst of 100 MiB/s for 3 s, then nothing.
	alloc := []uint64{0, 100 * mib, 100 * mib, 100 * mib, 0, 0, 0, 0, 0, 0}
	free := []uint64{0, 40 * mib, 80 * mib, 120 * mib, 120 * mib, 120 * mib, 120 * mib, 120 * mib, 120 * mib, 120 * mib}
	got := feed(d, alloc, free)
	if len(got) != 1 || got[0] != 6 {
		t.Fatalf("releases at seconds %v, want exactly one at 6 (3 s after the burst's last second)", got)
	}
}

func TestDeciderWaitsWhileBusy(t *testing.T) {
	d := &decider{cfg: testConfig()}
	alloc := make([]uint64, 20)
	free := make([]uint64, 20)
	for i := range alloc {
		alloc[i] = 5 * mib
		free[i] = 200 * mib
	}
	if got := feed(d, alloc, free); len(got) != 0 {
		t.Fatalf("released at seconds %v while allocating 5 MiB/s, want none", got)
	}
}

func TestDeciderSkipsSmallFree(t *testing.T) {
	d := &decider{cfg: testConfig()}
	alloc := []uint64{0, 100 * mib, 0, 0, 0, 0, 0, 0}
	free := []uint64{0, 10 * mib, 10 * mib, 10 * mib, 10 * mib, 10 * mib, 10 * mib, 10 * mib}
	if got := feed(d, alloc, free); len(got) != 0 {
		t.Fatalf("released at seconds %v with 10 MiB free, want none below MinFree", got)
	}
}

func TestDeciderNeedsNewBurst(t *testing.T) {
	d := &decider{cfg: testConfig()}
	// One burst, a long quiet spell with free memory left over (the
	// release did not return all of it), then a second burst.
	alloc := []uint64{0, 100 * mib, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 100 * mib, 0, 0, 0, 0}
	free := make([]uint64, len(alloc))
	for i := range free {
		free[i] = 64 * mib
	}
	got := feed(d, alloc, free)
	if len(got) != 2 || got[0] != 4 || got[1] != 15 {
		t.Fatalf("releases at seconds %v, want one after each burst, at 4 and 15", got)
	}
}

// syncBuffer is a log sink that Run may write to while the test reads it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestRunReturnsMemory allocates and drops 256 MiB in the test process and
// checks that Run returns the free heap to the operating system once
// allocation stops.
func TestRunReturnsMemory(t *testing.T) {
	var logs syncBuffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		Run(ctx, Config{Quiet: 500 * time.Millisecond, QuietRate: mib, MinFree: 32 * mib, Interval: 100 * time.Millisecond},
			zerolog.New(&logs))
	}()
	defer func() {
		cancel()
		<-done
	}()

	// Keep 64 MiB live while churning 256 MiB through the heap, so the
	// collector's goal, and with it the free memory left behind, is large.
	live := make([][]byte, 0, 64)
	for i := range 256 {
		b := make([]byte, mib)
		b[0] = byte(i)
		if i%4 == 0 {
			live = append(live, b)
		}
	}
	runtime.KeepAlive(live)
	live = nil

	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(logs.String(), "returned free heap memory") {
		if time.Now().After(deadline) {
			t.Fatalf("no release within 20 s of the burst; log: %q", logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if s := read(0); s.Free > 32*mib {
		t.Errorf("free heap after the release is %d MiB, want at most 32 MiB", s.Free/mib)
	}
}

func TestRunDisabled(t *testing.T) {
	finished := make(chan struct{})
	go func() {
		Run(context.Background(), Config{}, zerolog.Nop())
		close(finished)
	}()
	select {
	case <-finished:
	case <-time.After(5 * time.Second):
		t.Fatal("Run with Quiet 0 did not return at once")
	}
}

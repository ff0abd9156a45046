package workers

import "time"

// Defaults of the workers, each with its reason. A zero field in a
// configuration takes the default of the same name.
const (
	// DefaultHeartbeatInterval is the time between heartbeats. Five seconds
	// costs one small append per instance per interval and lets a dead
	// instance be found within seconds.
	DefaultHeartbeatInterval = 5 * time.Second

	// DefaultHeartbeatTTL is how long a peer's heartbeat counter may stay
	// unchanged before the peer is suspect. It spans three heartbeat
	// intervals, so one lost or late heartbeat never makes a live instance
	// suspect.
	DefaultHeartbeatTTL = 15 * time.Second

	// DefaultDrainGrace is added to the TTL of a peer that announced it is
	// draining, because a drain stops the periodic heartbeats while it
	// closes sockets. Kubernetes kills a pod 30 s after SIGTERM by default
	// (terminationGracePeriodSeconds), so a drain that runs longer was
	// killed.
	DefaultDrainGrace = 30 * time.Second

	// DefaultReclaimInterval is the time between reclaim passes. It equals
	// the heartbeat interval, so a dead peer is reclaimed at most one
	// interval after it becomes suspect.
	DefaultReclaimInterval = 5 * time.Second

	// DefaultReclaimBatch is the number of reclaimed events per append.
	// Each one writes its event (about 0.7 KiB) and the connection's
	// tombstone (about 0.5 KiB), and a batch taken in shard order rewrites
	// one or two shards. That is an estimated 0.4 MiB per transaction, well
	// under the 4 MiB a Dapr state store accepts over gRPC by default.
	DefaultReclaimBatch = 256

	// DefaultTopic is the pub/sub topic lifecycle events are published to,
	// the one the backend API subscribes to.
	DefaultTopic = "system-events"

	// DefaultPublishBatch is the number of events published between two
	// cursor writes. A restart re-sends at most this many events, and a busy
	// stream costs one cursor write per 64 events.
	DefaultPublishBatch = 64

	// DefaultRetryMin is the first wait after a failed publish or store
	// call. It is long enough not to spin on a dependency that is
	// restarting.
	DefaultRetryMin = 100 * time.Millisecond

	// DefaultRetryMax caps the doubling wait between retries, so a
	// dependency that comes back is used again within half a minute.
	DefaultRetryMax = 30 * time.Second

	// DefaultWarnEvery is the minimum time between two warnings of one
	// kind, and the next one reports how many were suppressed. An outage
	// then logs about two lines a minute per loop instead of one per
	// attempt.
	DefaultWarnEvery = 30 * time.Second
)

// orDefault returns v, or def when v is not positive.
func orDefault[T int | time.Duration](v, def T) T {
	if v <= 0 {
		return def
	}
	return v
}

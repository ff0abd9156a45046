// Package eventlogtest is the conformance suite that every state store
// backend of the event log must pass. It drives the backend only through the
// state.Store interface and the eventlog API, so the same subtests run against
// the embedded bbolt store in every test run and against a Dapr state store
// in an integration run.
//
// A backend test supplies a Factory and calls Run:
//
//	func TestConformance(t *testing.T) { eventlogtest.Run(t, eventlogtest.Embedded) }
package eventlogtest

import (
	"testing"

	"github.com/virtufin/websocketmanager/internal/state"
)

// Backend is one store under test.
type Backend struct {
	// Store is empty when the Factory returns it: no key under
	// eventlog.KeyPrefix or any other key the suite writes. A backend on a
	// shared server can give each Factory call its own key prefix.
	Store state.Store
	// Reopen closes the store last returned (Store, or the result of an
	// earlier Reopen) and opens the same data again, as a restarted process
	// would. Writers on the old store must be closed first.
	Reopen func(t *testing.T) state.Store
	// Crash returns a second store that holds what a crash of the process at
	// this instant would leave behind: every transaction whose Transact has
	// returned, and nothing else. The current store stays open and is
	// abandoned by the caller, as a killed process abandons its writers. Nil
	// when the backend cannot simulate a crash, and the subtests that need
	// one are skipped.
	Crash func(t *testing.T) state.Store
}

// Factory opens a fresh, empty backend for one subtest and registers the
// cleanup of every store it opens with t.Cleanup.
type Factory func(t *testing.T) Backend

// Run runs every conformance subtest against stores made by open.
func Run(t *testing.T, open Factory) {
	tests := []struct {
		name string
		run  func(t *testing.T, open Factory)
	}{
		{"AppendOrder", testAppendOrder},
		{"DurableAcrossReopen", testDurableAcrossReopen},
		{"DurableAfterCrash", testDurableAfterCrash},
		{"ConcurrentAppends", testConcurrentAppends},
		{"ReadFromAndLimit", testReadFromAndLimit},
		{"StreamsListHeads", testStreamsListHeads},
		{"TwoWriters", testTwoWriters},
		{"StreamTaken", testStreamTaken},
		{"InvalidStreamName", testInvalidStreamName},
		{"ValidationRejectsAppend", testValidationRejectsAppend},
		{"AppendAfterClose", testAppendAfterClose},
		{"ReplayMergeOrder", testReplayMergeOrder},
		{"ReplayFromCursor", testReplayFromCursor},
		{"ReplayStop", testReplayStop},
		{"FollowSameLog", testFollowSameLog},
		{"FollowOtherLog", testFollowOtherLog},
		{"FollowCancelDuringPass", testFollowCancelDuringPass},
		{"CursorRoundTrip", testCursorRoundTrip},
		{"CursorInvalid", testCursorInvalid},
		{"RepairTornTail", testRepairTornTail},
		{"RepairAfterCrash", testRepairAfterCrash},
		{"CorruptMiddle", testCorruptMiddle},
		{"ProjectorConflictRetried", testProjectorConflictRetried},
		{"ProjectorFailureLags", testProjectorFailureLags},
		{"CatchUp", testCatchUp},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.run(t, open) })
	}
}

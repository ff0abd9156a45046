package dapr

import (
	"errors"
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/virtufin/websocketmanager/internal/state"
)

// Errors of the package. Each is wrapped with the details.
var (
	// ErrConfig reports an unusable Config.
	ErrConfig = errors.New("dapr: invalid config")
	// ErrSidecarUnreachable reports that Open gave up waiting for the
	// sidecar's gRPC API.
	ErrSidecarUnreachable = errors.New("dapr: sidecar unreachable")
	// ErrComponent reports a component that the sidecar does not have or
	// that lacks a feature wsm needs.
	ErrComponent = errors.New("dapr: unusable component")
	// ErrSubscribeUnsupported reports a Subscribe on the Dapr PubSub.
	// Dapr delivers subscriptions by calling the app, so they go through
	// Subscriptions instead. It wraps errors.ErrUnsupported.
	ErrSubscribeUnsupported = fmt.Errorf("dapr: subscribe needs an app server: %w", errors.ErrUnsupported)
)

// mapStateError turns what the sidecar returns for a state call into the
// state package's errors, keeping the original in the chain.
//
// What Dapr 1.14 returns for an ETag that does not match depends on the call
// and the store, which is why this looks at messages as well as codes:
//
//   - SaveState and DeleteState: gRPC Aborted, on every store.
//   - ExecuteStateTransaction: gRPC Internal, "error while executing state
//     transaction: ..." followed by the store's error. Stores that report
//     an ETag error add "possible etag mismatch" (state.in-memory,
//     PostgreSQL and most others). The Redis store does not: its Lua
//     scripts fail with "failed to set key <key>" or "failed to delete
//     <key>", and the runtime passes that on as it is.
//   - A create-only write (first-write, no ETag) on an existing row of the
//     PostgreSQL store: "no item was updated". Not exercised here.
//   - An ETag that a store cannot parse: "invalid etag value".
//   - An unknown store name: gRPC InvalidArgument.
func mapStateError(op string, err error) error {
	if err == nil {
		return nil
	}
	s, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("dapr: %s: %w", op, err)
	}
	msg := s.Message()
	switch {
	case s.Code() == codes.Aborted,
		strings.Contains(msg, "possible etag mismatch"),
		strings.Contains(msg, "no item was updated"),
		redisScriptRejected(msg):
		return fmt.Errorf("dapr: %s: %w: %w", op, state.ErrETagMismatch, err)
	case s.Code() == codes.InvalidArgument,
		strings.Contains(msg, "invalid etag value"):
		return fmt.Errorf("dapr: %s: %w: %w", op, state.ErrInvalidArgument, err)
	}
	return fmt.Errorf("dapr: %s: %w", op, err)
}

// redisScriptRejected reports the error of the Redis state store's set or
// delete script taking its "version does not match" branch. Older Redis
// servers word it "Error running script ... @user_script:N: failed to set
// key K", Redis 7 "user_script:N: failed to set key K script: ...".
func redisScriptRejected(msg string) bool {
	return strings.Contains(msg, "user_script") &&
		(strings.Contains(msg, "failed to set key ") || strings.Contains(msg, "failed to delete "))
}

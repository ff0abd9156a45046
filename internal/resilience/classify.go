package resilience

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/virtufin/websocketmanager/internal/state"
)

// RequestError reports an error that blames the request rather than the
// dependency: an ETag conflict, an invalid argument, or a gRPC status that
// reports the same. The dependency responded, so the breaker counts it as a
// success. The same request would fail again, so it is not retried.
func RequestError(err error) bool {
	if errors.Is(err, state.ErrETagMismatch) || errors.Is(err, state.ErrInvalidArgument) {
		return true
	}
	if s, ok := status.FromError(err); ok && err != nil {
		switch s.Code() {
		case codes.InvalidArgument, codes.NotFound, codes.FailedPrecondition,
			codes.AlreadyExists, codes.Aborted, codes.OutOfRange:
			return true
		}
	}
	return false
}

// Retryable reports whether another attempt could succeed where this one
// failed. Request errors, rejections by an open breaker, a closed store,
// context errors and gRPC statuses that no retry changes (Unimplemented,
// PermissionDenied, Unauthenticated) are not retryable.
func Retryable(err error) bool {
	switch {
	case err == nil,
		RequestError(err),
		errors.Is(err, ErrOpen),
		errors.Is(err, state.ErrClosed),
		errors.Is(err, context.Canceled):
		return false
	}
	if s, ok := status.FromError(err); ok {
		switch s.Code() {
		case codes.Unimplemented, codes.PermissionDenied, codes.Unauthenticated, codes.Canceled:
			return false
		}
	}
	return true
}

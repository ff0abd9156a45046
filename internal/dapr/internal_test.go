package dapr

import (
	"encoding/json"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/virtufin/websocketmanager/internal/state"
)

// TestMapStateError feeds mapStateError the errors that go-sdk v1.11 returned
// from daprd 1.14 in this package's integration tests, verbatim but for key
// names and script hashes.
func TestMapStateError(t *testing.T) {
	sdkErr := func(prefix string, code codes.Code, msg string) error {
		return fmt.Errorf("%s: %w", prefix, status.Error(code, msg))
	}
	tests := []struct {
		name string
		err  error
		want error // nil: neither sentinel
	}{
		{"redis transaction, stale etag on set",
			sdkErr("error executing state transaction", codes.Internal,
				"error while executing state transaction: ERR user_script:14: failed to set key p1||a script: d908b9, on @user_script:14."),
			state.ErrETagMismatch},
		{"redis transaction, stale etag on delete",
			sdkErr("error executing state transaction", codes.Internal,
				"error while executing state transaction: ERR user_script:6: failed to delete p1||a script: 2446db, on @user_script:6."),
			state.ErrETagMismatch},
		{"older redis wording",
			sdkErr("error executing state transaction", codes.Internal,
				"error while executing state transaction: ERR Error running script (call to f_d908b9): @user_script:14: failed to set key p1||a"),
			state.ErrETagMismatch},
		{"in-memory transaction",
			sdkErr("error executing state transaction", codes.Internal,
				"error while executing state transaction: possible etag mismatch. error from state store: state etag not match for key=wsm||a: current=1, expect=2"),
			state.ErrETagMismatch},
		{"save state",
			sdkErr("error saving state", codes.Aborted,
				"failed saving state in state store statestore: possible etag mismatch. error from state store: ERR user_script:14: failed to set key p1||a"),
			state.ErrETagMismatch},
		{"unparsable etag",
			sdkErr("error executing state transaction", codes.Internal,
				`error while executing state transaction: invalid etag value: strconv.Atoi: parsing "xyz": invalid syntax`),
			state.ErrInvalidArgument},
		{"unknown store",
			sdkErr("error getting state", codes.InvalidArgument, "state store nosuch is not found"),
			state.ErrInvalidArgument},
		{"sidecar down",
			sdkErr("error getting state", codes.Unavailable, `connection error: desc = "transport: Error while dialing: dial tcp 127.0.0.1:1: connect: connection refused"`),
			nil},
		{"redis down",
			sdkErr("error getting state", codes.Internal, "fail to get a from state store statestore: dial tcp 127.0.0.1:6379: connect: connection refused"),
			nil},
		{"not a gRPC error", errors.New("boom"), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := mapStateError("op", tt.err)
			for _, sentinel := range []error{state.ErrETagMismatch, state.ErrInvalidArgument} {
				if is, want := errors.Is(got, sentinel), sentinel == tt.want; is != want {
					t.Errorf("errors.Is(%v, %v) = %v, want %v", got, sentinel, is, want)
				}
			}
			if !errors.Is(got, tt.err) {
				t.Errorf("mapped error %v does not wrap the original", got)
			}
		})
	}
	if mapStateError("op", nil) != nil {
		t.Error("mapStateError(nil) != nil")
	}
}

func TestKeepTraceparent(t *testing.T) {
	tests := []struct {
		name      string
		in        string
		wantTrace string // traceid expected after; "" means the input is returned unchanged
	}{
		{"traceparent only", `{"id":"1","traceparent":"00-aa-bb-01","data":{"x":1}}`, "00-aa-bb-01"},
		{"no traceparent", `{"id":"1","data":{"x":1}}`, ""},
		{"traceid already set", `{"id":"1","traceparent":"00-aa-bb-01","traceid":"other"}`, ""},
		{"not an object", `[1,2]`, ""},
		{"not JSON", `not json`, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := keepTraceparent([]byte(tt.in))
			if tt.wantTrace == "" {
				if string(out) != tt.in {
					t.Errorf("keepTraceparent(%s) = %s, want it unchanged", tt.in, out)
				}
				return
			}
			var got, in map[string]any
			if err := json.Unmarshal(out, &got); err != nil {
				t.Fatalf("output %s is not JSON: %v", out, err)
			}
			json.Unmarshal([]byte(tt.in), &in)
			if got["traceid"] != tt.wantTrace {
				t.Errorf("traceid = %v, want %s", got["traceid"], tt.wantTrace)
			}
			delete(got, "traceid")
			if fmt.Sprint(got) != fmt.Sprint(in) {
				t.Errorf("other attributes = %v, want %v unchanged", got, in)
			}
		})
	}
}

func TestTraitsOf(t *testing.T) {
	tests := []struct {
		typ        string
		atomic     bool
		createETag string
	}{
		{"state.redis", false, "-1"},
		{"state.in-memory", true, ""},
		{"state.postgresql", true, ""},
		{"state.cassandra", false, ""},
	}
	for _, tt := range tests {
		if got := traitsOf(tt.typ); got.atomic != tt.atomic || got.createOnlyETag != tt.createETag {
			t.Errorf("traitsOf(%s) = %+v, want atomic %v, create-only ETag %q", tt.typ, got, tt.atomic, tt.createETag)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	if err := (Config{}).Validate(); err != nil {
		t.Errorf("Config{}.Validate() = %v, want nil", err)
	}
	err := Config{StartupTimeout: -1, ProbeTimeout: -1, BulkGetChunk: -1}.Validate()
	if !errors.Is(err, ErrConfig) {
		t.Fatalf("Validate() = %v, want ErrConfig", err)
	}
	if n := len(err.(interface{ Unwrap() []error }).Unwrap()); n != 3 {
		t.Errorf("Validate() reported %d problems, want 3: %v", n, err)
	}
}

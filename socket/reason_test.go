package socket

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/lxzan/gws"

	"github.com/virtufin/websocketmanager/schemas"
)

// fakeStatus has the two methods of gws's internal status code type, which
// tests outside gws cannot construct.
type fakeStatus uint16

func (s fakeStatus) Error() string  { return fmt.Sprintf("gws: status %d", uint16(s)) }
func (s fakeStatus) Uint16() uint16 { return uint16(s) }

func TestReasonFromError(t *testing.T) {
	readTimeout := &net.OpError{Op: "read", Net: "tcp", Err: os.ErrDeadlineExceeded}
	writeTimeout := &net.OpError{Op: "write", Net: "tcp", Err: os.ErrDeadlineExceeded}

	tests := []struct {
		name       string
		err        error
		wantReason string
		wantCode   uint16
	}{
		{"close frame 1000", &gws.CloseError{Code: 1000}, schemas.ReasonClientClosed, 1000},
		{"close frame 4001", &gws.CloseError{Code: 4001, Reason: []byte("bye")}, schemas.ReasonClientClosed, 4001},
		{"close frame without code", &gws.CloseError{Code: 0}, schemas.ReasonClientClosed, 1005},
		{"close frame with 1005", &gws.CloseError{Code: 1005}, schemas.ReasonProtocolError, 1002},
		{"close frame with 2000", &gws.CloseError{Code: 2000}, schemas.ReasonProtocolError, 1002},
		{"close frame with 5000", &gws.CloseError{Code: 5000}, schemas.ReasonProtocolError, 1002},
		{"EOF", io.EOF, schemas.ReasonConnectionLost, 1006},
		{"reset", &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}, schemas.ReasonConnectionLost, 1006},
		{"closed socket", fmt.Errorf("read: %w", net.ErrClosed), schemas.ReasonConnectionLost, 1006},
		{"read timeout", readTimeout, schemas.ReasonPingTimeout, 1006},
		{"write timeout", writeTimeout, schemas.ReasonSlowConsumer, 1006},
		{"gws 1009", fakeStatus(1009), schemas.ReasonMessageTooBig, 1009},
		{"gws 1002", fakeStatus(1002), schemas.ReasonProtocolError, 1002},
		{"invalid UTF-8", gws.ErrTextEncoding, schemas.ReasonProtocolError, 1007},
		{"reserved opcode", errors.New("gws: unexpected opcode 3"), schemas.ReasonProtocolError, 1002},
		{"nil", nil, schemas.ReasonConnectionLost, 1006},
		{"unknown", errors.New("something odd"), schemas.ReasonConnectionLost, 1006},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ReasonFromError(tt.err)

			if got.Reason != tt.wantReason {
				t.Errorf("reason: got %q, want %q", got.Reason, tt.wantReason)
			}
			if got.Code != tt.wantCode {
				t.Errorf("code: got %d, want %d", got.Code, tt.wantCode)
			}
			if err := got.Validate(); err != nil {
				t.Errorf("Validate: %v", err)
			}
		})
	}
}

func TestConstructorsCoverEveryReason(t *testing.T) {
	all := []CloseReason{
		ClientClosed(1000, ""), ConnectionLost(""), PingTimeout(""), ServerShutdown(""),
		Kicked(DefaultKickCode, ""), ProtocolError(""), MessageTooBig(""), SlowConsumer(""),
		Fenced(""), InternalError(""),
	}
	wantCodes := map[string]uint16{
		schemas.ReasonClientClosed:   1000,
		schemas.ReasonConnectionLost: 1006,
		schemas.ReasonPingTimeout:    1006,
		schemas.ReasonServerShutdown: 1001,
		schemas.ReasonKicked:         4000,
		schemas.ReasonProtocolError:  1002,
		schemas.ReasonMessageTooBig:  1009,
		schemas.ReasonSlowConsumer:   1008,
		schemas.ReasonFenced:         1012,
		schemas.ReasonInternalError:  1011,
	}

	seen := map[string]bool{}
	for _, r := range all {
		seen[r.Reason] = true
		if got, want := r.Code, wantCodes[r.Reason]; got != want {
			t.Errorf("%s code: got %d, want %d", r.Reason, got, want)
		}
		if err := r.Validate(); err != nil {
			t.Errorf("%s: Validate: %v", r.Reason, err)
		}
	}
	for _, reason := range schemas.Reasons {
		if !seen[reason] {
			t.Errorf("no constructor for reason %q", reason)
		}
	}
}

func TestCloseReasonValidate(t *testing.T) {
	tests := []struct {
		name    string
		reason  CloseReason
		wantErr bool
	}{
		{"known reason", Fenced(""), false},
		{"unknown reason", CloseReason{Code: 1000, Reason: "tired"}, true},
		{"code below range", CloseReason{Code: 999, Reason: schemas.ReasonKicked}, true},
		{"code above range", CloseReason{Code: 5000, Reason: schemas.ReasonKicked}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.reason.Validate()
			if got := err != nil; got != tt.wantErr {
				t.Fatalf("Validate error: got %v, want error %v", err, tt.wantErr)
			}
			if err != nil && !errors.Is(err, ErrInvalidReason) {
				t.Errorf("Validate error %v does not wrap ErrInvalidReason", err)
			}
		})
	}
}

func TestCloseReasonAsError(t *testing.T) {
	err := fmt.Errorf("send: %w", Kicked(4001, "spam"))

	if !errors.Is(err, Kicked(DefaultKickCode, "")) {
		t.Errorf("errors.Is(%v, kicked): got false, want true", err)
	}
	if errors.Is(err, Fenced("")) {
		t.Errorf("errors.Is(%v, fenced): got true, want false", err)
	}

	var r CloseReason
	if !errors.As(err, &r) {
		t.Fatalf("errors.As(%v, *CloseReason): got false", err)
	}
	if r.Code != 4001 || r.Detail != "spam" {
		t.Errorf("errors.As result: got %+v, want code 4001 detail spam", r)
	}
	if want := "socket: connection closed: kicked (4001): spam"; r.Error() != want {
		t.Errorf("Error(): got %q, want %q", r.Error(), want)
	}
}

func TestCleanDetail(t *testing.T) {
	long := strings.Repeat("é", maxDetailBytes) // 2 bytes per rune

	tests := []struct {
		name  string
		input string
		want  string
	}{
		{"short", "fine", "fine"},
		{"invalid UTF-8", "a\xffb", "a\uFFFDb"},
		{"cut at a rune boundary", long, long[:maxDetailBytes]},
		{"cut inside a rune", "x" + long, "x" + long[:maxDetailBytes-2]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := cleanDetail(tt.input)
			if got != tt.want {
				t.Errorf("cleanDetail: got %d bytes %q..., want %d bytes", len(got), got[:min(len(got), 8)], len(tt.want))
			}
		})
	}
}

package socket

import (
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/lxzan/gws"

	"github.com/virtufin/websocketmanager/schemas"
)

// Close codes from RFC 6455 section 7.4.1 and the IANA WebSocket close code
// registry. Codes 1005 and 1006 are recorded locally and never sent in a frame.
const (
	CodeNormalClosure   uint16 = 1000
	CodeGoingAway       uint16 = 1001
	CodeProtocolError   uint16 = 1002
	CodeNoStatus        uint16 = 1005
	CodeAbnormalClosure uint16 = 1006
	CodeInvalidPayload  uint16 = 1007
	CodePolicyViolation uint16 = 1008
	CodeMessageTooBig   uint16 = 1009
	CodeInternalError   uint16 = 1011
	CodeServiceRestart  uint16 = 1012
	CodeTLSHandshake    uint16 = 1015

	// DefaultKickCode is the close code of a kick. RFC 6455 reserves
	// 4000-4999 for private use, so clients can tell a kick from any
	// standard close.
	DefaultKickCode uint16 = 4000
)

// maxDetailBytes is the longest detail the disconnected event schema accepts.
const maxDetailBytes = 1024

// ErrInvalidReason is wrapped by CloseReason.Validate.
var ErrInvalidReason = errors.New("socket: invalid close reason")

// CloseReason is the cause of a connection's end. The same value becomes the close
// frame (Code, with Reason as its text), the reason and closeCode of the
// disconnected event, and the reason field of the log line.
//
// Code is what the server sent or, when no frame could be sent, the code
// RFC 6455 reserves for that: 1006 for a connection that ended without a
// close frame, 1005 for a client close frame without a status code.
// A CloseReason is an error, so Send can return the reason a connection
// is closing.
type CloseReason struct {
	Code   uint16
	Reason string // one of schemas.Reasons
	Detail string // free text for operators, never sent to the client
	// Traceparent is the W3C trace context of the request that caused the
	// close, if any. The disconnected event carries it.
	Traceparent string
}

// Error implements error.
func (r CloseReason) Error() string {
	if r.Detail == "" {
		return fmt.Sprintf("socket: connection closed: %s (%d)", r.Reason, r.Code)
	}
	return fmt.Sprintf("socket: connection closed: %s (%d): %s", r.Reason, r.Code, r.Detail)
}

// Is reports whether target is a CloseReason with the same Reason, so
// errors.Is(err, socket.SlowConsumer("")) matches whatever the code and detail.
func (r CloseReason) Is(target error) bool {
	t, ok := target.(CloseReason)
	return ok && t.Reason == r.Reason
}

// Validate checks that Reason is one of schemas.Reasons and that Code fits
// the range the disconnected event schema accepts (1000-4999).
func (r CloseReason) Validate() error {
	if !slices.Contains(schemas.Reasons, r.Reason) {
		return fmt.Errorf("%w: unknown reason %q, want one of %v", ErrInvalidReason, r.Reason, schemas.Reasons)
	}
	if r.Code < 1000 || r.Code > 4999 {
		return fmt.Errorf("%w: close code %d of %s is outside 1000-4999", ErrInvalidReason, r.Code, r.Reason)
	}
	return nil
}

// sendable reports whether Code may appear in a close frame. RFC 6455
// forbids 1005, 1006 and 1015 on the wire: they only describe what happened.
func (r CloseReason) sendable() bool {
	return r.Code != CodeNoStatus && r.Code != CodeAbnormalClosure && r.Code != CodeTLSHandshake
}

func newReason(code uint16, reason, detail string) CloseReason {
	return CloseReason{Code: code, Reason: reason, Detail: cleanDetail(detail)}
}

// ClientClosed is a close frame from the client with its status code, or
// 1005 when the frame carried none (code 0).
func ClientClosed(code uint16, detail string) CloseReason {
	if code == 0 {
		code = CodeNoStatus
	}
	return newReason(code, schemas.ReasonClientClosed, detail)
}

// ConnectionLost is EOF, a reset or another transport failure without a
// close frame, so the code is 1006. gws v1.8.9 still tries to write a 1000
// close frame of its own after a failed read, which a peer that has gone
// does not read.
func ConnectionLost(detail string) CloseReason {
	return newReason(CodeAbnormalClosure, schemas.ReasonConnectionLost, detail)
}

// PingTimeout is a client that sent no frame within the ping interval plus
// the pong timeout. A close frame cannot reach a dead peer, so the code is
// 1006, the code for a connection that ended without one.
func PingTimeout(detail string) CloseReason {
	return newReason(CodeAbnormalClosure, schemas.ReasonPingTimeout, detail)
}

// ServerShutdown closes with 1001 (going away) while the instance drains.
func ServerShutdown(detail string) CloseReason {
	return newReason(CodeGoingAway, schemas.ReasonServerShutdown, detail)
}

// Kicked closes a connection on the backend's request with a code from the
// private range 4000-4999. Config.KickCode sets the code Server.Kick uses.
func Kicked(code uint16, detail string) CloseReason {
	return newReason(code, schemas.ReasonKicked, detail)
}

// ProtocolError closes with 1002 after the client broke RFC 6455.
func ProtocolError(detail string) CloseReason {
	return newReason(CodeProtocolError, schemas.ReasonProtocolError, detail)
}

// MessageTooBig closes with 1009 after a message exceeded the read limit.
func MessageTooBig(detail string) CloseReason {
	return newReason(CodeMessageTooBig, schemas.ReasonMessageTooBig, detail)
}

// SlowConsumer closes with 1008 (policy violation) when the send queue is
// full. A write that timed out records slow_consumer with 1006 instead,
// because the frame could not be written either.
func SlowConsumer(detail string) CloseReason {
	return newReason(CodePolicyViolation, schemas.ReasonSlowConsumer, detail)
}

// Fenced closes with 1012 (service restart) when the instance finds its
// incarnation reclaimed. Clients then reconnect to a live incarnation.
func Fenced(detail string) CloseReason {
	return newReason(CodeServiceRestart, schemas.ReasonFenced, detail)
}

// InternalError closes with 1011 when the server cannot serve a connection,
// such as when the connected event cannot be appended.
func InternalError(detail string) CloseReason {
	return newReason(CodeInternalError, schemas.ReasonInternalError, detail)
}

// ReasonFromError maps the error gws passes to OnClose to a CloseReason.
// It covers a connection that ended on its own. When the server started the
// close, the reason recorded then takes precedence and this is not called.
//
// The mapping, for gws v1.8.9:
//   - *gws.CloseError: the client's close frame, client_closed with its code,
//     or protocol_error when the code is one RFC 6455 forbids on the wire;
//   - a read deadline timeout: ping_timeout;
//   - a write deadline timeout: slow_consumer with 1006;
//   - gws's 1009 status: message_too_big; its 1002 status, a reserved
//     opcode or invalid UTF-8 in a text message: protocol_error;
//   - EOF, a reset, a broken pipe, a closed socket or any other error:
//     connection_lost.
func ReasonFromError(err error) CloseReason {
	if err == nil || err.Error() == "" {
		// gws reports an empty error only if the loop ended without one.
		return ConnectionLost("")
	}

	var closeErr *gws.CloseError
	if errors.As(err, &closeErr) {
		return reasonFromCloseFrame(closeErr)
	}

	if isTimeout(err) {
		return reasonFromTimeout(err)
	}

	if r, ok := reasonFromProtocol(err); ok {
		return r
	}

	return ConnectionLost(err.Error())
}

// reasonFromCloseFrame mirrors the code check gws applies before it echoes a
// client's close frame: where gws replies with 1002, the client broke the
// protocol.
func reasonFromCloseFrame(e *gws.CloseError) CloseReason {
	text := string(e.Reason)
	if e.Code == 0 {
		return ClientClosed(0, text)
	}
	if !validPeerCode(e.Code) {
		return ProtocolError(fmt.Sprintf("close frame with invalid code %d", e.Code))
	}
	return ClientClosed(e.Code, text)
}

// validPeerCode reports whether a client may send code in a close frame:
// 1000-1003, 1007-1013 and the application range 3000-4999.
func validPeerCode(code uint16) bool {
	switch {
	case code >= 1000 && code <= 1003:
		return true
	case code >= 1007 && code <= 1013:
		return true
	case code >= 3000 && code <= 4999:
		return true
	}
	return false
}

func isTimeout(err error) bool {
	var netErr net.Error
	if errors.As(err, &netErr) && netErr.Timeout() {
		return true
	}
	return errors.Is(err, os.ErrDeadlineExceeded)
}

// reasonFromTimeout distinguishes a read deadline (the client went silent)
// from a write deadline (the client stopped reading).
func reasonFromTimeout(err error) CloseReason {
	var opErr *net.OpError
	if errors.As(err, &opErr) && opErr.Op == "write" {
		return newReason(CodeAbnormalClosure, schemas.ReasonSlowConsumer, "write timed out: "+err.Error())
	}
	return PingTimeout("no frame before the read deadline")
}

// gwsStatus matches gws's internal status code type, which is how gws v1.8.9
// reports a message over the read limit (1009) and most protocol violations
// (1002). The type itself lives in an internal package.
type gwsStatus interface {
	error
	Uint16() uint16
}

// unexpectedOpcodePrefix starts the error gws v1.8.9 returns for a reserved
// opcode. gws sends 1002 for it but hands OnClose a plain error, so the text
// is the only thing to match.
const unexpectedOpcodePrefix = "gws: unexpected opcode"

func reasonFromProtocol(err error) (CloseReason, bool) {
	var status gwsStatus
	if errors.As(err, &status) {
		if status.Uint16() == CodeMessageTooBig {
			return MessageTooBig("message exceeds the read limit"), true
		}
		return newReason(status.Uint16(), schemas.ReasonProtocolError, status.Error()), true
	}

	if errors.Is(err, gws.ErrTextEncoding) {
		return newReason(CodeInvalidPayload, schemas.ReasonProtocolError, "text message is not valid UTF-8"), true
	}

	if strings.HasPrefix(err.Error(), unexpectedOpcodePrefix) {
		return ProtocolError(err.Error()), true
	}

	return CloseReason{}, false
}

// cleanDetail makes free text fit the disconnected event schema.
func cleanDetail(s string) string { return truncateUTF8(s, maxDetailBytes) }

// truncateUTF8 replaces invalid UTF-8 in s, then cuts it to at most n bytes
// at a rune boundary.
func truncateUTF8(s string, n int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) <= n {
		return s
	}

	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut]
}

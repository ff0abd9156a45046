package socket

import "fmt"

// KickOptions tune a kick. The zero value kicks like Kick with no detail.
type KickOptions struct {
	// Code is the close code, within 4000-4999. Zero means Config.KickCode.
	Code uint16
	// Detail is free text for operators: it goes into the disconnected
	// event and the log, never to the client.
	Detail string
	// Traceparent is the W3C trace context of the request behind the kick.
	// The disconnected event carries it.
	Traceparent string
}

// KickWith closes a connection with the kicked reason like Kick, with the
// code, detail and trace context of opts. A code outside 4000-4999 fails
// with an error matching ErrInvalidReason and closes nothing.
func (s *Server) KickWith(connID string, opts KickOptions) error {
	code := opts.Code
	if code == 0 {
		code = s.cfg.KickCode
	}
	if code < 4000 || code > 4999 {
		return fmt.Errorf("kick %s: %w: code %d is outside 4000-4999", connID, ErrInvalidReason, code)
	}

	c, ok := s.hub.lookup(connID)
	if !ok {
		return fmt.Errorf("kick %s: %w", connID, ErrNotFound)
	}
	r := Kicked(code, opts.Detail)
	r.Traceparent = opts.Traceparent
	if !c.closeWith(r) {
		return fmt.Errorf("kick %s: %w: %w", connID, ErrClosing, *c.closing.Load())
	}
	c.logFields(s.log.Debug()).Uint16("close_code", code).Str("traceparent", opts.Traceparent).Msg("kick requested")
	return nil
}

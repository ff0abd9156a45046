package socket

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/lxzan/gws"
	"github.com/rs/zerolog"

	"github.com/virtufin/websocketmanager/eventlog"
)

// Close texts of the feed. The text of a close frame is at most 123 bytes.
const (
	feedShutdownText    = "server shutdown"
	feedUnreadableText  = "event log unreadable"
	feedSlowTextPattern = "slow subscriber: %d frames waiting for %s"
)

// Bounds of the retries after a failed read of the log. The first retry
// comes soon, and a store that stays down costs one read every 5 s per
// subscriber.
const (
	feedRetryMin = 100 * time.Millisecond
	feedRetryMax = 5 * time.Second
)

// subscriberGoroutines is the number of goroutines each subscriber runs:
// the gws read loop, the follower and the writer.
const subscriberGoroutines = 3

// feedClose is the reason the feed ends a subscription, with the close
// frame it sends. A zero code sends no frame, for a peer that cannot read
// one.
type feedClose struct {
	code  uint16
	text  string
	flush bool   // write the frames already queued before the close frame
	why   string // for the log
}

// subscriber is one connection to the feed. Its follower goroutine reads
// the log and queues frames, and its writer goroutine writes them, so the
// queue absorbs bursts and never holds more than Buffer frames.
type subscriber struct {
	feed   *Feed
	socket *gws.Conn
	id     string
	who    feedPrincipal
	remote string
	filter feedFilter

	// ctx ends when the subscription closes. It stops the follower.
	ctx    context.Context
	cancel context.CancelFunc

	frames   chan []byte // cap Buffer
	pongs    chan []byte // at most one pong waits
	closeReq chan struct{}
	closing  atomic.Pointer[feedClose]
	readDone chan struct{} // closed when the read loop ended

	lastFrame atomic.Int64 // feed clock of the last frame from the client

	// cursor is after the last event read, delivered or filtered out. Only
	// the follower goroutine touches it.
	cursor eventlog.Cursor
}

func (s *subscriber) logFields(e *zerolog.Event) *zerolog.Event {
	e = e.Str("subscriber_id", s.id).Str("remote_addr", s.remote)
	if s.who.apiToken {
		return e.Str("auth", "api_token")
	}
	return e.Str("user_id", s.who.userID)
}

// start runs the subscriber's goroutines. Feed.register has counted them.
func (s *subscriber) start() {
	f := s.feed
	s.logFields(f.logger.Info()).Msg("feed subscriber joined")
	go func() {
		defer f.running.Done()
		s.socket.ReadLoop()
	}()
	go func() {
		defer f.running.Done()
		s.follow()
	}()
	go func() {
		defer f.running.Done()
		s.write()
	}()
}

func (s *subscriber) touch() { s.lastFrame.Store(int64(s.feed.clock())) }

func (s *subscriber) queuePong(payload []byte) {
	select {
	case s.pongs <- payload:
	default: // one pong already waits, and RFC 6455 section 5.5.3 allows a pong to the latest ping only
	}
}

// requestClose records why the subscription ends and starts closing it
// without blocking. Only the first reason counts, and it reports whether
// this one did.
func (s *subscriber) requestClose(c feedClose) bool {
	if !s.closing.CompareAndSwap(nil, &c) {
		return false
	}
	s.cancel()
	close(s.closeReq)
	return true
}

// finish runs on the read goroutine once the connection is gone.
func (s *subscriber) finish(err error) {
	s.cancel()
	close(s.readDone)
	s.feed.remove(s)

	line := s.logFields(s.feed.logger.Info())
	if c := s.closing.Load(); c != nil {
		code := c.code
		if code == 0 {
			code = CodeAbnormalClosure // no close frame was sent
		}
		line = line.Uint16("close_code", code).Str("reason", c.why)
	} else {
		r := ReasonFromError(err)
		line = line.Uint16("close_code", r.Code).Str("reason", r.Reason).Str("detail", r.Detail)
	}
	line.Msg("feed subscriber left")
}

// follow reads the log from the subscriber's cursor and queues a frame for
// each event that passes the filter, until the subscription ends. A failed
// read is retried from the same cursor, so the subscriber gets no gap and
// no repeat. A damaged log closes the subscription with 1011.
func (s *subscriber) follow() {
	wait := feedRetryMin
	warned := false
	for {
		before := s.cursor.String()
		_, err := s.feed.log.Follow(s.ctx, s.cursor, s.deliver)
		if s.ctx.Err() != nil || err == nil {
			return
		}
		if errors.Is(err, eventlog.ErrCorrupt) {
			s.logFields(s.feed.logger.Error()).Err(err).Msg("feed subscriber closed: the event log is damaged")
			s.requestClose(feedClose{code: CodeInternalError, text: feedUnreadableText, why: "event log unreadable"})
			return
		}

		if s.cursor.String() != before {
			wait, warned = feedRetryMin, false
		}
		// One warning per outage and subscriber, and the rest at debug.
		line := s.feed.logger.Debug()
		if !warned {
			line, warned = s.feed.logger.Warn(), true
		}
		s.logFields(line).Err(err).Dur("retry_in", wait).Msg("feed cannot read the event log, retrying")
		if !sleepCtx(s.ctx, wait) {
			return
		}
		wait = min(2*wait, feedRetryMax)
	}
}

// deliver handles one record of Follow. Every record advances the cursor,
// and one that passes the filter is queued as a frame carrying it. When
// the buffer is full, deliver waits for the writer, which holds Follow, so
// the subscriber reads the log at its own pace. A buffer that stays full
// for SlowTimeout closes the subscription as slow.
func (s *subscriber) deliver(rec eventlog.Record) error {
	s.cursor.Advance(rec.Position())
	if !s.filter.match(rec) {
		return nil
	}

	frame, err := encodeFrame(rec, s.cursor)
	if err != nil {
		// The event decoded from the log, so it cannot encode later
		// either. Skipping it keeps the subscriber going.
		s.logFields(s.feed.logger.Error()).Err(err).Str("event_id", rec.Event.ID()).Str("position", rec.Position().String()).
			Msg("feed skipped an event that cannot be encoded")
		return nil
	}

	select {
	case s.frames <- frame:
		return nil
	default:
	}
	slow := time.NewTimer(s.feed.cfg.SlowTimeout)
	defer slow.Stop()
	select {
	case s.frames <- frame:
		return nil
	case <-s.ctx.Done():
		return s.ctx.Err()
	case <-slow.C:
	}

	cfg := s.feed.cfg
	c := feedClose{code: CodePolicyViolation, text: fmt.Sprintf(feedSlowTextPattern, cfg.Buffer, cfg.SlowTimeout), why: "slow subscriber"}
	if s.requestClose(c) {
		s.logFields(s.feed.logger.Warn()).Int("buffer", cfg.Buffer).Dur("slow_timeout", cfg.SlowTimeout).
			Msg("feed subscriber closed with 1008: slow subscriber, its frame buffer stayed full")
	}
	return eventlog.ErrStop
}

// encodeFrame renders a record's event as stored, plus the cursor to
// resume from after it, in CloudEvents structured JSON mode.
func encodeFrame(rec eventlog.Record, cur eventlog.Cursor) ([]byte, error) {
	ev := rec.Event.Clone()
	ev.SetExtension(CursorExtension, cur.String())
	body, err := ev.MarshalJSON()
	if err != nil {
		return nil, fmt.Errorf("socket: encode feed frame of %s: %w", rec.Position(), err)
	}
	return body, nil
}

// write sends queued frames, pongs and pings until the subscription ends.
// Apart from gws itself, which writes a close frame when the client
// closes or a read fails, it is the only goroutine that writes to the
// socket.
func (s *subscriber) write() {
	cfg := s.feed.cfg
	ping := time.NewTicker(cfg.PingInterval)
	defer ping.Stop()

	for {
		// A close request goes before frames that are ready at the same
		// time, so a slow subscriber's backlog is not written first.
		select {
		case <-s.closeReq:
			s.writeClose()
			return
		case <-s.readDone:
			return
		default:
		}

		var err error
		select {
		case <-s.closeReq:
			s.writeClose()
			return
		case <-s.readDone:
			return
		case frame := <-s.frames:
			err = s.writeMessage(gws.OpcodeText, frame)
		case payload := <-s.pongs:
			err = s.writeMessage(gws.OpcodePong, payload)
		case <-ping.C:
			silent := s.feed.clock() - time.Duration(s.lastFrame.Load())
			if silent >= cfg.PingInterval+cfg.PongTimeout {
				s.requestClose(feedClose{why: fmt.Sprintf("ping timeout: no frame for %s", silent.Round(time.Millisecond))})
				continue
			}
			err = s.writeMessage(gws.OpcodePing, nil)
		}
		if err != nil {
			// gws has closed the socket, so the read loop ends and
			// finish cleans up.
			s.logFields(s.feed.logger.Debug()).Err(err).Msg("feed write failed")
			return
		}
	}
}

func (s *subscriber) writeMessage(op gws.Opcode, payload []byte) error {
	_ = s.socket.NetConn().SetWriteDeadline(time.Now().Add(s.feed.cfg.WriteTimeout))
	return s.socket.WriteMessage(op, payload)
}

// writeClose ends the connection as requestClose recorded. One write
// deadline bounds the queued frames and the close frame together.
func (s *subscriber) writeClose() {
	c := s.closing.Load()
	if c.code == 0 {
		_ = s.socket.NetConn().Close()
		return
	}

	_ = s.socket.NetConn().SetWriteDeadline(time.Now().Add(s.feed.cfg.WriteTimeout))
	if c.flush {
		// The follower has stopped, so the queue no longer grows, except
		// by a frame it was sending when the close began.
		for range len(s.frames) {
			if err := s.socket.WriteMessage(gws.OpcodeText, <-s.frames); err != nil {
				return
			}
		}
	}
	// gws writes the frame, then closes the TCP connection, which ends
	// the read loop.
	_ = s.socket.WriteClose(c.code, []byte(c.text))
}

// sleepCtx waits for d or until ctx ends, and reports whether it waited
// fully.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

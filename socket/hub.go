package socket

import (
	"errors"
	"sync"
	"sync/atomic"
)

// Reasons an upgrade is rejected with HTTP 503.
var (
	errTooManyConnections = errors.New("socket: too many connections on this instance")
	errDraining           = errors.New("socket: server is shutting down")
)

// hub is the registry of a Server's connections. One mutex guards it: an
// entry changes twice per connection and is read once per Send, which does
// not contend at the connection counts of one instance.
type hub struct {
	mu sync.RWMutex

	// conns contains every registered connection, from the upgrade until its
	// disconnected event is appended, so a close-all reaches connections
	// whose connected event is still being appended.
	conns map[string]*conn

	// users indexes the visible connections by non-empty user id.
	users map[string]map[string]*conn

	slots       int // upgrades in progress plus registered connections
	maxSlots    int
	visible     int // connections Lookup and Send can reach
	draining    bool
	incarnation string
}

func newHub(maxConnections int, incarnation string) *hub {
	return &hub{
		conns:       make(map[string]*conn),
		users:       make(map[string]map[string]*conn),
		maxSlots:    maxConnections,
		incarnation: incarnation,
	}
}

// reserve takes a connection slot before the upgrade, so MaxConnections
// also counts handshakes in progress.
func (h *hub) reserve() error {
	h.mu.Lock()
	defer h.mu.Unlock()

	if h.draining {
		return errDraining
	}
	if h.slots >= h.maxSlots {
		return errTooManyConnections
	}
	h.slots++
	return nil
}

func (h *hub) release() {
	h.mu.Lock()
	h.slots--
	h.mu.Unlock()
}

// register adds an upgraded connection and stamps it with the current
// incarnation. It fails once draining has started, because a connection
// registered after the close-all snapshot would never be closed.
func (h *hub) register(c *conn) error {
	h.mu.Lock()
	defer h.mu.Unlock()

	if h.draining {
		return errDraining
	}
	c.info.Incarnation = h.incarnation
	h.conns[c.info.ID] = c
	return nil
}

// show makes a connection reachable by Lookup and Send once its connected
// event is appended. It runs first under the hub lock, so no Send can
// reach the connection before first has queued what it queues.
func (h *hub) show(c *conn, first func()) {
	h.mu.Lock()
	defer h.mu.Unlock()

	if _, ok := h.conns[c.info.ID]; !ok || c.visible {
		return
	}
	first()
	c.visible = true
	h.visible++

	if c.info.UserID == "" {
		return
	}
	byID := h.users[c.info.UserID]
	if byID == nil {
		byID = make(map[string]*conn)
		h.users[c.info.UserID] = byID
	}
	byID[c.info.ID] = c
}

// hide makes a closing connection unreachable by Lookup and Send while its
// disconnected event is appended.
func (h *hub) hide(c *conn) {
	h.mu.Lock()
	defer h.mu.Unlock()

	if !c.visible {
		return
	}
	c.visible = false
	h.visible--

	if byID := h.users[c.info.UserID]; byID != nil {
		delete(byID, c.info.ID)
		if len(byID) == 0 {
			delete(h.users, c.info.UserID)
		}
	}
}

// remove drops a finished connection, frees its slot and signals every
// close-all waiting for it.
func (h *hub) remove(c *conn) {
	h.hide(c)

	h.mu.Lock()
	delete(h.conns, c.info.ID)
	h.slots--
	batches := c.batches
	c.batches = nil
	h.mu.Unlock()

	for _, b := range batches {
		b.finishOne()
	}
}

func (h *hub) lookup(id string) (*conn, bool) {
	h.mu.RLock()
	defer h.mu.RUnlock()

	c, ok := h.conns[id]
	if !ok || !c.visible {
		return nil, false
	}
	return c, true
}

func (h *hub) userConns(userID string) []*conn {
	h.mu.RLock()
	defer h.mu.RUnlock()

	byID := h.users[userID]
	out := make([]*conn, 0, len(byID))
	for _, c := range byID {
		out = append(out, c)
	}
	return out
}

// visibleConns returns the connections Lookup can find, in no order.
func (h *hub) visibleConns() []*conn {
	h.mu.RLock()
	defer h.mu.RUnlock()

	out := make([]*conn, 0, h.visible)
	for _, c := range h.conns {
		if c.visible {
			out = append(out, c)
		}
	}
	return out
}

func (h *hub) infos() []ConnInfo {
	h.mu.RLock()
	defer h.mu.RUnlock()

	out := make([]ConnInfo, 0, h.visible)
	for _, c := range h.conns {
		if c.visible {
			out = append(out, c.info)
		}
	}
	return out
}

func (h *hub) count() int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.visible
}

func (h *hub) currentIncarnation() string {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.incarnation
}

// track runs prepare and returns the connections matched by choose, and a batch that
// completes when every one of them has been removed. The snapshot and the
// batch registration happen under one lock with prepare, so no matched
// connection can finish unnoticed, and no connection can register between
// prepare (which may start draining or switch the incarnation) and the
// snapshot.
func (h *hub) track(prepare func(h *hub), choose func(c *conn) bool) (*closeBatch, []*conn) {
	h.mu.Lock()
	defer h.mu.Unlock()

	prepare(h)
	batch := &closeBatch{done: make(chan struct{})}
	var targets []*conn
	for _, c := range h.conns {
		if choose(c) {
			c.batches = append(c.batches, batch)
			targets = append(targets, c)
		}
	}

	batch.remaining.Store(int64(len(targets)))
	if len(targets) == 0 {
		close(batch.done)
	}
	return batch, targets
}

// closeBatch is the set of connections one close-all waits for.
type closeBatch struct {
	remaining atomic.Int64
	done      chan struct{}
}

func (b *closeBatch) finishOne() {
	if b.remaining.Add(-1) == 0 {
		close(b.done)
	}
}

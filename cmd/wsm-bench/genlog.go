package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/google/uuid"

	"github.com/virtufin/websocketmanager/eventlog"
	"github.com/virtufin/websocketmanager/internal/embedded"
	"github.com/virtufin/websocketmanager/projections"
	"github.com/virtufin/websocketmanager/schemas"
	"github.com/virtufin/websocketmanager/workers"
)

// Defaults and caps of genlog.
const (
	defaultGenEvents = 1_000_000
	// maxGenEvents keeps a mistyped --events from filling the disk: a
	// million events with the defaults take 2.5 GiB in the store file.
	maxGenEvents    = 20_000_000
	maxGenInstances = 64
	// genEventsPerInstanceSecond is the simulated load of one instance:
	// connects plus closes per second of event time.
	genEventsPerInstanceSecond = 100
	// genRestartDelay is the least event time a crashed instance stays
	// down before it starts with a new incarnation. Up to 10 s more is
	// added at random. It is longer than the heartbeat TTL plus one reclaim
	// interval, so a peer reclaims first.
	genRestartDelay     = 30 * time.Second
	genVersion          = "genlog"
	genlogProgressEvery = 5 * time.Second
)

const genlogHelp = `Usage: wsm-bench genlog --data-dir DIR [flags]

Write an embedded wsm data directory holding a log of exactly --events
events, as a fleet of wsm serve instances would have written it: each
event is built with the schemas constructors, validated, and appended
through eventlog.Writer with the view projection, so "wsm rebuild
--verify --data-dir DIR" passes on the result.

The simulated fleet:
  - --instances instances, each with its own stream, open and close
    connections at 100 events per second of event time, holding about
    --open connections each once ramped up, for --users users (1 in 20
    connections is anonymous);
  - closes are 70% client_closed (1000 or 1001), 20% connection_lost,
    5% ping_timeout, 2% kicked, 3% slow_consumer, message_too_big or
    protocol_error;
  - every instance heartbeats every 5 s of event time (about 0.2% of the
    events): starting and serving when it starts, draining and stopped
    when it shuts down;
  - every --crash-every events one instance crashes: a peer claims its
    incarnation and appends one connection.reclaimed event per connection
    it held, 15 to 20 s of event time later, and the instance restarts 30
    to 40 s after the crash with a new incarnation, so a new stream. One
    crash runs at a time, so crashes are at least 30 s of event time
    (24,000 to 32,000 events with 8 instances) apart. With the defaults, about
    4% of the events are reclaimed events;
  - at the end every instance shuts down cleanly, closing its connections
    as server_shutdown (1001).
Event times run at the simulated rate and end about now. All streams are
written by this one process into one bbolt file, which wsm serve itself
never does on the embedded backend. The log and the views have the same
format either way.

DIR must not exist or be empty. Progress goes to stderr every 5 s, and a
summary to stdout when done.

Flags:
`

// genlogConfig holds the flags of genlog.
type genlogConfig struct {
	dataDir    string
	events     int
	instances  int
	open       int
	users      int
	crashEvery int
	batch      int
	seed       uint64
	timeout    time.Duration
	jsonOutput bool
	quiet      bool
}

// genlogReport is the summary of a genlog run.
type genlogReport struct {
	DataDir         string  `json:"dataDir"`
	Events          int     `json:"events"`
	Connected       int     `json:"connected"`
	Disconnected    int     `json:"disconnected"`
	Reclaimed       int     `json:"reclaimed"`
	Heartbeats      int     `json:"heartbeats"`
	Crashes         int     `json:"crashes"`
	Streams         int     `json:"streams"`
	Seconds         float64 `json:"seconds"`
	EventsPerSecond float64 `json:"eventsPerSecond"`
	StoreBytes      int64   `json:"storeBytes"`
}

func runGenlog(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseGenlogFlags(args, stderr)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.timeout)
	defer cancel()

	rep, err := generateLog(ctx, cfg, stderr)
	if err != nil {
		return err
	}
	if cfg.jsonOutput {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	fmt.Fprintf(stdout, "wsm-bench genlog: %d events in %d streams written to %s in %.1f s, %.0f events/s\n",
		rep.Events, rep.Streams, rep.DataDir, rep.Seconds, rep.EventsPerSecond)
	fmt.Fprintf(stdout, "  connected %d, disconnected %d, reclaimed %d after %d crashes, heartbeats %d; store file %.2f GiB\n",
		rep.Connected, rep.Disconnected, rep.Reclaimed, rep.Crashes, rep.Heartbeats, float64(rep.StoreBytes)/(1<<30))
	return nil
}

func parseGenlogFlags(args []string, stderr io.Writer) (genlogConfig, error) {
	var cfg genlogConfig
	fs := flag.NewFlagSet("genlog", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), genlogHelp)
		fs.PrintDefaults()
	}
	fs.StringVar(&cfg.dataDir, "data-dir", "", "data directory to create; must not exist or be empty (required)")
	fs.IntVar(&cfg.events, "events", defaultGenEvents, fmt.Sprintf("number of events to write, at most %d", maxGenEvents))
	fs.IntVar(&cfg.instances, "instances", 8, fmt.Sprintf("instances in the simulated fleet, 2 to %d", maxGenInstances))
	fs.IntVar(&cfg.open, "open", 2000, "open connections each instance holds once ramped up")
	fs.IntVar(&cfg.users, "users", 20_000, "number of distinct user ids")
	fs.IntVar(&cfg.crashEvery, "crash-every", 50_000, "events between two instance crashes; 0 means no crash")
	fs.IntVar(&cfg.batch, "batch", 512, "events per append, 1 to 512; 512 fills a group commit")
	fs.Uint64Var(&cfg.seed, "seed", 1, "seed of the simulation; ids are random whatever the seed")
	fs.DurationVar(&cfg.timeout, "timeout", 15*time.Minute, "give up after this long")
	fs.BoolVar(&cfg.jsonOutput, "json", false, "print the summary as JSON")
	fs.BoolVar(&cfg.quiet, "quiet", false, "print no progress lines")
	if err := parseFlags(fs, args, stderr); err != nil {
		return cfg, err
	}

	var errs []error
	if cfg.dataDir == "" {
		errs = append(errs, errors.New("--data-dir is required"))
	} else if err := checkEmptyDir(cfg.dataDir); err != nil {
		errs = append(errs, err)
	}
	if cfg.instances < 2 || cfg.instances > maxGenInstances {
		errs = append(errs, fmt.Errorf("--instances %d: must be 2 to %d, so that a peer can reclaim", cfg.instances, maxGenInstances))
	}
	// Starting and stopping takes four heartbeats per instance, so ask for
	// ten times that to leave room for connections.
	if minEvents := 40 * cfg.instances; cfg.events < minEvents || cfg.events > maxGenEvents {
		errs = append(errs, fmt.Errorf("--events %d: must be %d (40 per instance) to %d", cfg.events, minEvents, maxGenEvents))
	}
	if cfg.open < 1 {
		errs = append(errs, fmt.Errorf("--open %d: must be at least 1", cfg.open))
	}
	if cfg.users < 1 {
		errs = append(errs, fmt.Errorf("--users %d: must be at least 1", cfg.users))
	}
	if cfg.crashEvery < 0 {
		errs = append(errs, fmt.Errorf("--crash-every %d: must be 0 or more", cfg.crashEvery))
	}
	if cfg.batch < 1 || cfg.batch > 512 {
		errs = append(errs, fmt.Errorf("--batch %d: must be 1 to 512, the writer's maximum batch", cfg.batch))
	}
	if cfg.timeout <= 0 {
		errs = append(errs, fmt.Errorf("--timeout %v: must be more than 0", cfg.timeout))
	}
	if err := errors.Join(errs...); err != nil {
		return cfg, &usageError{err}
	}
	return cfg, nil
}

// checkEmptyDir accepts a directory that does not exist yet or is empty, so
// genlog never writes into a live data directory.
func checkEmptyDir(dir string) error {
	entries, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("--data-dir %s: %w", dir, err)
	case len(entries) > 0:
		return fmt.Errorf("--data-dir %s: not empty (contains %s); pass a new or empty directory", dir, entries[0].Name())
	}
	return nil
}

// generateLog runs the simulation into a new store in cfg.dataDir and
// checks that the streams hold exactly cfg.events events.
func generateLog(ctx context.Context, cfg genlogConfig, stderr io.Writer) (genlogReport, error) {
	rep := genlogReport{DataDir: cfg.dataDir}
	store, err := embedded.Open(cfg.dataDir, embedded.Options{})
	if err != nil {
		return rep, err
	}
	defer store.Close()
	// wsm serve opens its log with schemas.Validate and the view projection.
	// Here the appenders validate each batch themselves before they take
	// the append lock, so validation runs in parallel with the commits.
	log := eventlog.Open(store, eventlog.Options{Projector: projections.Projector{}})

	start := time.Now()
	g := newGenerator(cfg, store, log, start)
	stopProgress := g.reportProgress(stderr, start)
	err = g.run(ctx)
	stopProgress()
	if err != nil {
		return rep, err
	}
	elapsed := time.Since(start)

	streams, err := log.Streams(ctx)
	if err != nil {
		return rep, err
	}
	var total uint64
	for _, s := range streams {
		total += s.Head
		if s.Projected != s.Head {
			return rep, fmt.Errorf("stream %s: views projected up to %d of %d events", s.Name, s.Projected, s.Head)
		}
	}
	if total != uint64(cfg.events) {
		return rep, fmt.Errorf("the streams hold %d events, want %d", total, cfg.events)
	}
	if err := store.Close(); err != nil {
		return rep, err
	}
	if fi, err := os.Stat(filepath.Join(cfg.dataDir, embedded.FileName)); err == nil {
		rep.StoreBytes = fi.Size()
	}

	rep.Events = int(total)
	rep.Connected = g.counts[schemas.TypeConnected]
	rep.Disconnected = g.counts[schemas.TypeDisconnected]
	rep.Reclaimed = g.counts[schemas.TypeReclaimed]
	rep.Heartbeats = g.counts[schemas.TypeHeartbeat]
	rep.Crashes = g.crashes
	rep.Streams = len(streams)
	rep.Seconds = elapsed.Seconds()
	rep.EventsPerSecond = float64(total) / elapsed.Seconds()
	return rep, nil
}

// closeMix is the share of each way a connection ends, in percent.
var closeMix = []struct {
	percent int
	code    int
	reason  string
	detail  string // %s is the client's address
}{
	{55, 1000, schemas.ReasonClientClosed, ""},
	{15, 1001, schemas.ReasonClientClosed, ""},
	{14, 1006, schemas.ReasonConnectionLost, "EOF"},
	{6, 1006, schemas.ReasonConnectionLost, "read tcp %s: read: connection reset by peer"},
	{5, 1006, schemas.ReasonPingTimeout, "no frame for 30s"},
	{2, 4000, schemas.ReasonKicked, "done"},
	{1, 1008, schemas.ReasonSlowConsumer, "send queue of 256 messages is full"},
	{1, 1009, schemas.ReasonMessageTooBig, "message exceeds the read limit"},
	{1, 1002, schemas.ReasonProtocolError, "close frame with invalid code 1005"},
}

var userAgents = []string{
	"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
	"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15",
	"Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
	"Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
	"okhttp/4.12.0",
	"Go-http-client/1.1",
}

// simConn is an open connection of the simulation.
type simConn struct {
	id, userID, remoteAddr, incarnation string
}

// simInstance is one instance of the simulated fleet. The generator's
// goroutine owns every field. The appender goroutine of the current
// incarnation gets its writer and identity as arguments.
type simInstance struct {
	index    int
	id       workers.Identity
	address  string
	jobs     chan genJob
	done     chan struct{} // closed once the appender committed its jobs and closed the writer
	open     []simConn
	pending  []*event.Event // built, not yet handed to the appender
	nextBeat time.Time
	live     bool
}

// genJob is one step of an appender, in order: wait for a channel, append
// events, or reclaim a dead incarnation.
type genJob struct {
	wait    <-chan struct{}
	events  []*event.Event
	reclaim *reclaimJob
}

// reclaimJob is a peer's reclaim of a crashed incarnation, run by the
// peer's appender so its events land in the peer's stream in time order.
type reclaimJob struct {
	dead     workers.Identity
	deadDone <-chan struct{} // the dead incarnation's appender finished
	conns    map[string]simConn
	at       time.Time
	done     chan struct{}
}

// crashState follows the one crash in progress.
type crashState struct {
	dead      *simInstance
	deadID    workers.Identity
	deadDone  <-chan struct{}
	peer      *simInstance
	reclaimAt time.Time
	restartAt time.Time
	reclaim   *reclaimJob // set once dispatched
}

// generator drives the simulated fleet on one goroutine and hands batches
// of events to one appender goroutine per incarnation.
type generator struct {
	cfg   genlogConfig
	store *embedded.Store
	log   *eventlog.Log
	rng   *rand.Rand
	clock time.Time // event time

	insts     []*simInstance
	produced  int // events handed to appenders or waiting in pending
	counts    map[string]int
	crashes   int
	nextCrash int // produced count at which the next crash is due
	crash     *crashState

	// appendMu lets one Append run at a time. Concurrent writers would
	// project batches that touch the same user indexes and fail each
	// other's commits with ETag mismatches, which wsm serve on the embedded
	// backend, one process with one writer, never does.
	appendMu  sync.Mutex
	committed atomic.Int64
	appenders sync.WaitGroup
	failOnce  sync.Once
	failErr   error
	cancel    context.CancelFunc
}

func newGenerator(cfg genlogConfig, store *embedded.Store, log *eventlog.Log, now time.Time) *generator {
	span := time.Duration(float64(cfg.events) / float64(cfg.instances*genEventsPerInstanceSecond) * float64(time.Second))
	g := &generator{
		cfg:       cfg,
		store:     store,
		log:       log,
		rng:       rand.New(rand.NewPCG(cfg.seed, 0x9e3779b97f4a7c15)),
		clock:     now.Add(-span).UTC().Truncate(time.Millisecond),
		counts:    map[string]int{},
		nextCrash: cfg.crashEvery,
	}
	for i := range cfg.instances {
		g.insts = append(g.insts, &simInstance{index: i, address: fmt.Sprintf("10.0.%d.%d:8080", i/250, i%250+1)})
	}
	return g
}

// fail records the first error and stops the run.
func (g *generator) fail(err error) {
	g.failOnce.Do(func() {
		g.failErr = err
		g.cancel()
	})
}

// run simulates the fleet until exactly cfg.events events are appended,
// then waits for every appender.
func (g *generator) run(parent context.Context) error {
	ctx, cancel := context.WithCancel(parent)
	g.cancel = cancel
	defer cancel()

	err := g.simulate(ctx)
	if err != nil {
		// Release appenders that wait for a reclaim that will not come.
		cancel()
	}
	for _, in := range g.insts {
		if in.jobs != nil {
			close(in.jobs)
			in.jobs = nil
		}
	}
	g.appenders.Wait()
	switch {
	case g.failErr != nil:
		return g.failErr
	case err != nil:
		return err
	case parent.Err() != nil:
		return fmt.Errorf("stopped after %d of %d events: %w", g.committed.Load(), g.cfg.events, parent.Err())
	}
	return nil
}

// budget returns how many events the run may still spend on connects and
// heartbeats: cfg.events less what is produced and what the crash in
// progress and the final shutdown will append for sure.
func (g *generator) budget() int {
	owed := 0
	for _, in := range g.insts {
		if in.live {
			owed += len(in.open) + 2 // its closes, draining and stopped
		}
	}
	if c := g.crash; c != nil {
		if c.reclaim == nil {
			owed += len(c.dead.open)
		}
		owed += 2 + 2 // starting and serving at the restart, then draining and stopped
	}
	return g.cfg.events - g.produced - owed
}

func (g *generator) simulate(ctx context.Context) error {
	for _, in := range g.insts {
		if err := g.start(ctx, in, nil); err != nil {
			return err
		}
	}
	for {
		if err := ctx.Err(); err != nil {
			return nil // run reports the cause
		}
		if err := g.advanceCrash(ctx); err != nil {
			return err
		}
		left := g.budget()
		if left <= 0 && g.crash == nil {
			break
		}
		if left <= 0 {
			// Only the crash in progress is left: skip to its next step.
			next := g.crash.reclaimAt
			if g.crash.reclaim != nil {
				next = g.crash.restartAt
			}
			if next.After(g.clock) {
				g.clock = next
			}
			continue
		}
		g.tick()
		if err := g.step(ctx, left); err != nil {
			return err
		}
	}
	return g.shutdown(ctx)
}

// tick advances event time by the gap to the next event of a fleet in
// which every live instance produces genEventsPerInstanceSecond events.
func (g *generator) tick() {
	live := 0
	for _, in := range g.insts {
		if in.live {
			live++
		}
	}
	mean := float64(time.Second) / float64(max(live, 1)*genEventsPerInstanceSecond)
	g.clock = g.clock.Add(time.Duration(g.rng.ExpFloat64() * mean))
}

// step produces one event, or starts a crash, within the budget left.
func (g *generator) step(ctx context.Context, left int) error {
	for _, in := range g.insts {
		if in.live && !g.clock.Before(in.nextBeat) {
			in.nextBeat = in.nextBeat.Add(workers.DefaultHeartbeatInterval)
			return g.heartbeat(ctx, in, schemas.StateServing)
		}
	}
	// A crash owes four heartbeats; keep a margin so the connections of
	// the last instances can still close.
	if g.cfg.crashEvery > 0 && g.crash == nil && g.produced >= g.nextCrash && left > 4+g.cfg.instances {
		started, err := g.startCrash(ctx)
		if err != nil || started {
			return err
		}
	}

	in := g.pickLive()
	target := float64(g.cfg.open)
	pOpen := min(max(0.5+0.5*(target-float64(len(in.open)))/target, 0.05), 1)
	switch {
	case left == 1:
		// A connect would owe a close that does not fit, so the last
		// event before the shutdown is a heartbeat.
		return g.heartbeat(ctx, in, schemas.StateServing)
	case len(in.open) == 0 || g.rng.Float64() < pOpen:
		return g.connect(ctx, in)
	default:
		return g.disconnect(ctx, in, g.rng.IntN(len(in.open)), false)
	}
}

func (g *generator) pickLive() *simInstance {
	var live []*simInstance
	for _, in := range g.insts {
		if in.live {
			live = append(live, in)
		}
	}
	return live[g.rng.IntN(len(live))]
}

// start opens a stream for a new incarnation of the instance and appends
// its starting and serving heartbeats. after, when set, delays the first
// append until the reclaim of the previous incarnation is done.
func (g *generator) start(ctx context.Context, in *simInstance, after <-chan struct{}) error {
	in.id = workers.Identity{
		InstanceID:  fmt.Sprintf("wsm-%d", in.index),
		Incarnation: uuid.Must(uuid.NewV7()).String(),
		StartedAt:   g.clock,
		Address:     in.address,
		Version:     genVersion,
	}
	w, err := g.log.NewWriter(ctx, in.id.Stream())
	if err != nil {
		return err
	}
	in.jobs = make(chan genJob, 4)
	in.done = make(chan struct{})
	in.live = true
	in.open = in.open[:0]
	g.appenders.Add(1)
	go g.runAppender(ctx, in.id, w, in.jobs, in.done)

	if after != nil {
		if err := g.send(ctx, in, genJob{wait: after}); err != nil {
			return err
		}
	}
	if err := g.heartbeat(ctx, in, schemas.StateStarting); err != nil {
		return err
	}
	g.clock = g.clock.Add(time.Duration(g.rng.IntN(1000)) * time.Millisecond)
	in.nextBeat = g.clock.Add(time.Duration(g.rng.Int64N(int64(workers.DefaultHeartbeatInterval))))
	return g.heartbeat(ctx, in, schemas.StateServing)
}

func (g *generator) heartbeat(ctx context.Context, in *simInstance, state string) error {
	ev, err := schemas.NewHeartbeat(schemas.Envelope{InstanceID: in.id.InstanceID, Time: g.clock}, schemas.Heartbeat{
		InstanceID:      in.id.InstanceID,
		Incarnation:     in.id.Incarnation,
		State:           state,
		ConnectionCount: len(in.open),
		StartedAt:       in.id.StartedAt,
		Address:         in.id.Address,
		Version:         in.id.Version,
	})
	if err != nil {
		return err
	}
	return g.add(ctx, in, ev)
}

func (g *generator) connect(ctx context.Context, in *simInstance) error {
	c := simConn{
		id:          uuid.Must(uuid.NewV7()).String(),
		remoteAddr:  fmt.Sprintf("10.%d.%d.%d:%d", 1+g.rng.IntN(200), g.rng.IntN(256), 1+g.rng.IntN(254), 32768+g.rng.IntN(28232)),
		incarnation: in.id.Incarnation,
	}
	if g.rng.IntN(20) != 0 {
		c.userID = fmt.Sprintf("user-%06d", g.rng.IntN(g.cfg.users))
	}
	ev, err := schemas.NewConnected(schemas.Envelope{InstanceID: in.id.InstanceID, Time: g.clock}, schemas.Connected{
		ConnectionID: c.id,
		InstanceID:   in.id.InstanceID,
		Incarnation:  in.id.Incarnation,
		UserID:       c.userID,
		RemoteAddr:   c.remoteAddr,
		UserAgent:    userAgents[g.rng.IntN(len(userAgents))],
		ConnectedAt:  g.clock,
	})
	if err != nil {
		return err
	}
	in.open = append(in.open, c)
	return g.add(ctx, in, ev)
}

// disconnect closes the i-th open connection of the instance: with a
// reason drawn from closeMix, or as server_shutdown when shutdown is set.
func (g *generator) disconnect(ctx context.Context, in *simInstance, i int, shutdown bool) error {
	c := in.open[i]
	in.open[i] = in.open[len(in.open)-1]
	in.open = in.open[:len(in.open)-1]

	code, reason, detail := 1001, schemas.ReasonServerShutdown, "instance stopping"
	if !shutdown {
		m := closeMix[g.pickClose()]
		code, reason, detail = m.code, m.reason, m.detail
		if strings.Contains(detail, "%s") {
			detail = fmt.Sprintf(detail, in.address+"->"+c.remoteAddr)
		}
	}
	ev, err := schemas.NewDisconnected(schemas.Envelope{InstanceID: in.id.InstanceID, Time: g.clock}, schemas.Disconnected{
		ConnectionID:   c.id,
		InstanceID:     in.id.InstanceID,
		Incarnation:    c.incarnation,
		UserID:         c.userID,
		CloseCode:      code,
		Reason:         reason,
		Detail:         detail,
		DisconnectedAt: g.clock,
	})
	if err != nil {
		return err
	}
	return g.add(ctx, in, ev)
}

func (g *generator) pickClose() int {
	n := g.rng.IntN(100)
	for i, m := range closeMix {
		if n < m.percent {
			return i
		}
		n -= m.percent
	}
	return 0
}

// add queues an event for the instance's appender, handing over a full
// batch.
func (g *generator) add(ctx context.Context, in *simInstance, ev *event.Event) error {
	in.pending = append(in.pending, ev)
	g.produced++
	g.counts[ev.Type()]++
	if len(in.pending) >= g.cfg.batch {
		return g.flush(ctx, in)
	}
	return nil
}

func (g *generator) flush(ctx context.Context, in *simInstance) error {
	if len(in.pending) == 0 {
		return nil
	}
	job := genJob{events: in.pending}
	in.pending = nil
	return g.send(ctx, in, job)
}

// send hands a job to the instance's appender. Events built before it go
// first, so the stream keeps their order.
func (g *generator) send(ctx context.Context, in *simInstance, job genJob) error {
	if job.events == nil {
		if err := g.flush(ctx, in); err != nil {
			return err
		}
	}
	select {
	case in.jobs <- job:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// startCrash kills a live instance that holds connections and picks the
// peer that will reclaim them. It reports false when no instance fits.
func (g *generator) startCrash(ctx context.Context) (bool, error) {
	var candidates []*simInstance
	for _, in := range g.insts {
		if in.live && len(in.open) > 0 {
			candidates = append(candidates, in)
		}
	}
	if len(candidates) == 0 {
		return false, nil
	}
	dead := candidates[g.rng.IntN(len(candidates))]
	var peers []*simInstance
	for _, in := range g.insts {
		if in.live && in != dead {
			peers = append(peers, in)
		}
	}
	if len(peers) == 0 {
		return false, nil
	}

	// The crashed process appends nothing more: its writer commits what it
	// took and stops, as a process killed after its last commit.
	if err := g.flush(ctx, dead); err != nil {
		return false, err
	}
	close(dead.jobs)
	dead.jobs = nil
	dead.live = false

	ttl := workers.DefaultHeartbeatTTL + time.Duration(g.rng.Int64N(int64(workers.DefaultReclaimInterval)))
	g.crash = &crashState{
		dead:      dead,
		deadID:    dead.id,
		deadDone:  dead.done,
		peer:      peers[g.rng.IntN(len(peers))],
		reclaimAt: g.clock.Add(ttl),
		restartAt: g.clock.Add(genRestartDelay + time.Duration(g.rng.Int64N(int64(10*time.Second)))),
	}
	g.crashes++
	g.nextCrash = g.produced + g.cfg.crashEvery
	return true, nil
}

// advanceCrash dispatches the reclaim and the restart of the crash in
// progress once event time reaches them.
func (g *generator) advanceCrash(ctx context.Context) error {
	c := g.crash
	if c == nil {
		return nil
	}
	if c.reclaim == nil && !g.clock.Before(c.reclaimAt) {
		conns := make(map[string]simConn, len(c.dead.open))
		for _, oc := range c.dead.open {
			conns[oc.id] = oc
		}
		c.reclaim = &reclaimJob{dead: c.deadID, deadDone: c.deadDone, conns: conns, at: g.clock, done: make(chan struct{})}
		g.produced += len(conns)
		g.counts[schemas.TypeReclaimed] += len(conns)
		c.dead.open = c.dead.open[:0]
		if err := g.send(ctx, c.peer, genJob{reclaim: c.reclaim}); err != nil {
			return err
		}
	}
	if c.reclaim != nil && !g.clock.Before(c.restartAt) {
		g.crash = nil
		return g.start(ctx, c.dead, c.reclaim.done)
	}
	return nil
}

// shutdown drains every live instance as wsm serve does on SIGTERM:
// heartbeat draining, close every connection with 1001, heartbeat stopped.
func (g *generator) shutdown(ctx context.Context) error {
	for _, in := range g.insts {
		if !in.live {
			continue
		}
		if err := g.heartbeat(ctx, in, schemas.StateDraining); err != nil {
			return err
		}
		for len(in.open) > 0 {
			g.clock = g.clock.Add(time.Millisecond)
			if err := g.disconnect(ctx, in, len(in.open)-1, true); err != nil {
				return err
			}
		}
		if err := g.heartbeat(ctx, in, schemas.StateStopped); err != nil {
			return err
		}
		if err := g.flush(ctx, in); err != nil {
			return err
		}
		close(in.jobs)
		in.jobs = nil
		in.live = false
	}
	if g.produced != g.cfg.events {
		return fmt.Errorf("internal error: produced %d events, want %d", g.produced, g.cfg.events)
	}
	return nil
}

// runAppender runs the jobs of one incarnation in order, then closes its
// writer. After a failure it only drains the channel.
func (g *generator) runAppender(ctx context.Context, id workers.Identity, w *eventlog.Writer, jobs <-chan genJob, done chan<- struct{}) {
	defer g.appenders.Done()
	defer close(done)
	for job := range jobs {
		if ctx.Err() != nil {
			continue
		}
		if err := g.runJob(ctx, id, w, job); err != nil {
			g.fail(fmt.Errorf("stream %s: %w", id.Stream(), err))
		}
	}
	closeCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := w.Close(closeCtx); err != nil {
		g.fail(fmt.Errorf("close stream %s: %w", id.Stream(), err))
	}
}

func (g *generator) runJob(ctx context.Context, id workers.Identity, w *eventlog.Writer, job genJob) error {
	switch {
	case job.wait != nil:
		select {
		case <-job.wait:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	case job.reclaim != nil:
		return g.reclaim(ctx, id, w, job.reclaim)
	}
	return g.append(ctx, w, job.events)
}

// append validates events as Writer.Append does with schemas.Validate, then
// appends them through w, one Append in the whole fleet at a time.
func (g *generator) append(ctx context.Context, w *eventlog.Writer, events []*event.Event) error {
	for i, ev := range events {
		if err := schemas.Validate(ev); err != nil {
			return fmt.Errorf("event %d of %d: %w", i+1, len(events), err)
		}
	}
	g.appendMu.Lock()
	defer g.appendMu.Unlock()
	if _, err := w.Append(ctx, events...); err != nil {
		return err
	}
	g.committed.Add(int64(len(events)))
	return nil
}

// reclaim claims a dead incarnation and appends its reclaimed events, as a
// peer's workers.Reclaimer does: a compare-and-swap on the instance record,
// then one event per connection in the dead incarnation's shards, in shard
// order. The events carry the simulated time, so it builds them here
// rather than through Reclaimer.ReclaimConnections, which stamps the wall
// clock.
func (g *generator) reclaim(ctx context.Context, id workers.Identity, w *eventlog.Writer, job *reclaimJob) error {
	select {
	case <-job.deadDone:
	case <-ctx.Done():
		return ctx.Err()
	}
	dead := job.dead.Stream()
	r := &workers.Reclaimer{ID: id, Log: w, Store: g.store}
	rec, err := r.Claim(ctx, job.dead.InstanceID, job.dead.Incarnation)
	if err != nil {
		return fmt.Errorf("claim %s: %w", dead, err)
	}

	held, err := projections.Reader{Store: g.store}.InstanceConnections(ctx, job.dead.InstanceID)
	if err != nil {
		return err
	}
	var ids []string
	for connID, inc := range held {
		if inc == job.dead.Incarnation {
			ids = append(ids, connID)
		}
	}
	if len(ids) != len(job.conns) {
		return fmt.Errorf("reclaim %s: the views contain %d of its connections, the simulation opened %d", dead, len(ids), len(job.conns))
	}
	slices.SortFunc(ids, func(a, b string) int {
		return cmp.Or(cmp.Compare(projections.ShardOf(a), projections.ShardOf(b)), strings.Compare(a, b))
	})

	for chunk := range slices.Chunk(ids, workers.DefaultReclaimBatch) {
		events := make([]*event.Event, 0, len(chunk))
		for _, connID := range chunk {
			c, ok := job.conns[connID]
			if !ok {
				return fmt.Errorf("reclaim %s: the views contain connection %s, which the simulation did not open there", dead, connID)
			}
			ev, err := schemas.NewReclaimed(schemas.Envelope{InstanceID: id.InstanceID, Time: job.at}, schemas.Reclaimed{
				ConnectionID:    connID,
				UserID:          c.userID,
				DeadInstanceID:  job.dead.InstanceID,
				DeadIncarnation: job.dead.Incarnation,
				ReclaimedBy:     id.Incarnation,
				LastHeartbeatAt: rec.LastHeartbeatAt,
			})
			if err != nil {
				return err
			}
			events = append(events, ev)
		}
		if err := g.append(ctx, w, events); err != nil {
			return err
		}
	}
	close(job.done)
	return nil
}

// reportProgress prints a line to stderr every genlogProgressEvery until the
// returned function is called, unless cfg.quiet.
func (g *generator) reportProgress(stderr io.Writer, start time.Time) (stop func()) {
	if g.cfg.quiet {
		return func() {}
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(genlogProgressEvery)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				n := g.committed.Load()
				elapsed := time.Since(start).Seconds()
				var size string
				if fi, err := os.Stat(filepath.Join(g.cfg.dataDir, embedded.FileName)); err == nil {
					size = fmt.Sprintf(", store file %.2f GiB", float64(fi.Size())/(1<<30))
				}
				fmt.Fprintf(stderr, "wsm-bench genlog: %d of %d events committed (%.0f%%) in %.0f s, %.0f events/s%s\n",
					n, g.cfg.events, 100*float64(n)/float64(g.cfg.events), elapsed, float64(n)/math.Max(elapsed, 1e-9), size)
			}
		}
	})
	return func() {
		close(done)
		wg.Wait()
	}
}

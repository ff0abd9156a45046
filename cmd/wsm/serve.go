package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/google/uuid"
	"github.com/rs/zerolog"

	"github.com/virtufin/websocketmanager/eventlog"
	"github.com/virtufin/websocketmanager/internal/memrelease"
	"github.com/virtufin/websocketmanager/projections"
	"github.com/virtufin/websocketmanager/schemas"
	"github.com/virtufin/websocketmanager/socket"
	"github.com/virtufin/websocketmanager/workers"
)

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer, env func(string) string) int {
	cfg := defaultServeConfig()
	fs := flag.NewFlagSet("wsm serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	envErr := bindServeFlags(fs, &cfg, env)
	if err := fs.Parse(args); err != nil {
		return exitBadUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "wsm serve: unexpected argument %q\n", fs.Arg(0))
		return exitBadUsage
	}
	cfg.resolveInstanceID(env)
	if err := errors.Join(envErr, cfg.Validate()); err != nil {
		fmt.Fprintf(stderr, "wsm serve: invalid configuration:\n%v\n", err)
		return exitBadUsage
	}
	logger, err := newLogger(stderr, cfg.LogFormat, cfg.LogLevel)
	if err != nil {
		fmt.Fprintf(stderr, "wsm serve: %v\n", err)
		return exitBadUsage
	}

	if err := serve(ctx, cfg, logger, stdout); err != nil {
		logger.Error().Err(err).Msg("wsm stopped with an error")
		return exitFailure
	}
	return exitOK
}

// instance is one running instance with everything it owns. Fencing
// replaces its incarnation, so id and writer are read under mu.
type instance struct {
	cfg        serveConfig
	baseLogger zerolog.Logger // no instance fields, for packages that add their own
	be         *backend
	log        *eventlog.Log
	views      projections.Reader

	mu         sync.Mutex
	id         workers.Identity
	writer     *eventlog.Writer
	stopFollow context.CancelFunc // stops publishing the current stream
	follows    sync.WaitGroup

	sock      *socket.Server
	beat      *workers.Heartbeat
	members   *workers.Membership // nil on the embedded backend
	reclaimer *workers.Reclaimer
	publisher *workers.Publisher // nil on the embedded backend
	messages  *workers.MessagePublisher
	feed      *socket.Feed
	http      *http.Server
	fencing   sync.Mutex // one fence at a time
	metrics   *serveMetrics
}

func (in *instance) logger() zerolog.Logger {
	id := in.identity()
	return in.baseLogger.With().Str("instance_id", id.InstanceID).Str("incarnation", id.Incarnation).Logger()
}

func (in *instance) identity() workers.Identity {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.id
}

func (in *instance) currentWriter() *eventlog.Writer {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.writer
}

// Append appends through the current incarnation's writer, so the socket
// server keeps working across a fence.
func (in *instance) Append(ctx context.Context, events ...*event.Event) error {
	_, err := in.currentWriter().Append(ctx, events...)
	return err
}

func newIdentity(instanceID, address string) workers.Identity {
	return workers.Identity{
		InstanceID:  instanceID,
		Incarnation: uuid.Must(uuid.NewV7()).String(),
		StartedAt:   time.Now().UTC(),
		Address:     address,
		Version:     version,
	}
}

// serve runs an instance until ctx ends, then drains it. Startup order:
// open the backend, repair and catch up the log, reclaim what earlier
// incarnations left, heartbeat starting, accept clients, heartbeat serving,
// then start the heartbeat, reclaim and publish loops.
func serve(ctx context.Context, cfg serveConfig, logger zerolog.Logger, stdout io.Writer) error {
	sm, err := newServeMetrics()
	if err != nil {
		return err
	}
	be, err := openBackend(ctx, cfg, logger, sm)
	if err != nil {
		return err
	}
	defer be.close()
	sm.watchBackend(be)

	opts := logOptions()
	opts.Logger = logger
	sm.instrumentLog(&opts)
	in := &instance{cfg: cfg, baseLogger: logger, be: be, log: eventlog.Open(be.store, opts), views: projections.Reader{Store: be.store}, metrics: sm}
	sm.SetAppendBacklog(in.appendBacklog)

	// Streams without a live writer: all of them when this process owns the
	// store, else this instance id's earlier incarnations.
	ownOld := func(stream string) bool {
		inst, _ := eventlog.SplitStreamName(stream)
		return be.exclusive || inst == cfg.InstanceID
	}
	if _, err := in.log.RepairTails(ctx, ownOld); err != nil {
		return err
	}
	if n, err := in.log.CatchUpAll(ctx); err != nil {
		return err
	} else if n > 0 {
		logger.Info().Int("events", n).Msg("caught up views with the log")
	}

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.Listen, err)
	}
	defer ln.Close()

	in.id = newIdentity(cfg.InstanceID, ln.Addr().String())
	in.writer, err = in.log.NewWriter(ctx, in.id.Stream())
	if err != nil {
		return err
	}
	if err := in.startWorkers(ctx); err != nil {
		in.writer.Close(context.Background())
		return err
	}
	return in.run(ctx, ln, stdout)
}

// startWorkers builds the reclaimer, membership and publisher, and reclaims
// what earlier incarnations of this instance id left. On the embedded
// backend this process holds the store's lock, so every other instance in
// the index is dead too and is reclaimed as well.
func (in *instance) startWorkers(ctx context.Context) error {
	logger := in.logger()
	in.reclaimer = &workers.Reclaimer{
		ID: in.id, Log: in.writer, Store: in.be.store, Logger: in.baseLogger, Interval: in.cfg.ReclaimInterval,
	}
	in.metrics.instrumentReclaimer(in.reclaimer)
	if !in.be.exclusive {
		var err error
		in.members, err = workers.NewMembership(workers.MembershipConfig{
			Views: in.views, Self: in.id.InstanceID, TTL: in.cfg.HeartbeatTTL, Logger: in.baseLogger,
		})
		if err != nil {
			return err
		}
		in.publisher, err = workers.NewPublisher(workers.PublisherConfig{
			Log: in.log, PubSub: in.be.pubsub, Topic: in.cfg.EventsTopic, Heartbeats: in.cfg.PublishHeartbeats, Logger: in.baseLogger,
			OnPublish: in.metrics.publishedLifecycle,
		})
		if err != nil {
			return err
		}
		in.reclaimer.Members = in.members
		in.reclaimer.Publication = in.publisher
	}

	if _, err := in.reclaimer.ReclaimPrevious(ctx); err != nil {
		return fmt.Errorf("reclaim previous incarnation: %w", err)
	}
	if in.publisher != nil {
		if _, err := in.publisher.EnqueuePrevious(ctx, in.id.InstanceID, in.id.Incarnation); err != nil {
			return fmt.Errorf("queue earlier streams for publishing: %w", err)
		}
	}
	if !in.be.exclusive {
		return nil
	}
	ids, err := in.views.InstanceIDs(ctx)
	if err != nil {
		return err
	}
	for _, id := range ids {
		if id == in.id.InstanceID {
			continue
		}
		if _, err := in.reclaimer.ReclaimInstance(ctx, id); err != nil && !errors.Is(err, workers.ErrClaimLost) {
			logger.Warn().Err(err).Str("dead_instance_id", id).Msg("reclaim of an instance left in the store failed")
		}
	}
	return nil
}

func (in *instance) run(ctx context.Context, ln net.Listener, stdout io.Writer) error {
	cfg := in.cfg
	logger := in.logger()
	auth, err := socket.NewAuthenticator(socket.AuthConfig{Secret: []byte(cfg.JWTSecret), AllowAnonymous: cfg.AllowAnonymous})
	if err != nil {
		return err
	}
	sockCfg := socket.Config{
		InstanceID:     in.id.InstanceID,
		Incarnation:    in.id.Incarnation,
		PingInterval:   cfg.PingInterval,
		PongTimeout:    cfg.PongTimeout,
		ReadLimit:      cfg.ReadLimit,
		SendQueue:      cfg.SendQueue,
		MaxConnections: cfg.MaxConnections,
	}
	if in.messages, err = in.newMessagePublisher(); err != nil {
		return err
	}
	sockCfg.OnMessage = in.onClientMessage
	in.metrics.instrumentSocket(&sockCfg)
	in.sock, err = socket.New(sockCfg, auth, in, in.baseLogger)
	if err != nil {
		return err
	}

	in.beat = &workers.Heartbeat{
		ID:       in.id,
		Log:      in.writer,
		Views:    in.views,
		Interval: cfg.HeartbeatInterval,
		Count:    in.sock.Count,
		Logger:   in.baseLogger,
	}
	// beatLoops owns the heartbeat and reclaim goroutines, which stop before
	// the drain; pubLoops owns the publisher's, which stop after it.
	beatLoops, stopBeatLoops := context.WithCancel(context.Background())
	defer stopBeatLoops()
	pubLoops, stopPubLoops := context.WithCancel(context.Background())
	defer stopPubLoops()
	in.beat.OnFenced = func(by string) { go in.fence(pubLoops, by) }
	if err := in.beat.Beat(ctx, schemas.StateStarting); err != nil {
		return err
	}

	a := &api{store: in.be.store, log: in.log, views: in.views, logger: logger, ready: in.readiness,
		auth: newAPIAuth(cfg.APIToken), self: in.identity}
	if in.members != nil {
		a.peers = in.members.Peers
	}
	if cfg.APIToken == "" {
		logger.Warn().Msg(apiTokenEnv + " is not set: the backend API is open to every local process")
	}
	mux := http.NewServeMux()
	if a.delivery, err = in.startDelivery(pubLoops, mux); err != nil {
		return err
	}
	mux.Handle("GET /ws", in.sock)
	if in.feed, err = in.newFeed(auth); err != nil {
		return err
	}
	mux.Handle("GET /events", in.feed)
	mux.Handle("GET /metrics", in.metrics.Handler())
	if cfg.Pprof {
		routePprof(mux)
	}
	a.routes(mux)
	in.http = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}

	go memrelease.Run(pubLoops, memrelease.Config{
		Quiet:     cfg.ReleaseMemoryAfter,
		QuietRate: memrelease.DefaultQuietRate,
		MinFree:   memrelease.DefaultMinFree,
	}, logger)

	serveErr := make(chan error, 1)
	go func() { serveErr <- in.http.Serve(ln) }()

	if cfg.Backend == "embedded" {
		if err := writeAddrFile(cfg.DataDir, ln.Addr().String()); err != nil {
			logger.Warn().Err(err).Msg("cannot write the address file; replay and rebuild will not reach this service")
		}
		defer os.Remove(filepath.Join(cfg.DataDir, addrFile))
	}

	if err := in.beat.Beat(ctx, schemas.StateServing); err != nil {
		return err
	}
	var beatWG, pubWG sync.WaitGroup
	beatWG.Go(func() { in.beat.Run(beatLoops) })
	pubWG.Go(func() { in.messages.Run(pubLoops) })
	if in.members != nil {
		beatWG.Go(func() { in.reclaimer.Run(beatLoops) })
	}
	if in.publisher != nil {
		pubWG.Go(func() { in.publisher.Run(pubLoops) })
		in.followStream(pubLoops, in.writer.Stream())
	}

	logger.Info().Str("address", ln.Addr().String()).Str("backend", cfg.Backend).Msg("wsm serving")
	fmt.Fprintf(stdout, "wsm serving: clients connect to ws://%s/ws, API at http://%s/v1/connections\n", ln.Addr(), ln.Addr())

	var runErr error
	select {
	case <-ctx.Done():
		logger.Info().Msg("shutdown signal received; draining")
	case runErr = <-serveErr:
		logger.Error().Err(runErr).Msg("HTTP server failed; draining")
	}
	// No fence may start while draining, and the drain writes the last
	// heartbeats itself.
	in.fencing.Lock()
	defer in.fencing.Unlock()
	stopBeatLoops()
	beatWG.Wait()
	err = in.drain()
	stopPubLoops()
	pubWG.Wait()
	return errors.Join(runErr, err)
}

// followStream publishes a stream live until parent ends or stopFollow,
// which it sets, is called.
func (in *instance) followStream(parent context.Context, stream string) {
	ctx, cancel := context.WithCancel(parent)
	in.mu.Lock()
	in.stopFollow = cancel
	in.mu.Unlock()
	in.follows.Go(func() {
		if err := in.publisher.Follow(ctx, stream); err != nil {
			logger := in.logger()
			logger.Error().Err(err).Str("stream", stream).Msg("publishing the stream stopped")
		}
	})
}

// readiness reports the store check on the embedded backend and each
// breaker on Dapr: Healthy when all are closed, Degraded when one is
// half-open, Unhealthy when one is open or the store does not respond.
func (in *instance) readiness(ctx context.Context) readiness {
	rd := readiness{Status: statusHealthy, Dependencies: map[string]dependency{}}
	if len(in.be.pipelines) == 0 {
		st := checkStore(ctx, in.be.store)
		rd.Dependencies["statestore"] = st
		if st.State != "up" {
			rd.Status = statusUnhealthy
		}
		return rd
	}
	for _, p := range in.be.pipelines {
		name, state, counts := p.State()
		rd.Dependencies[name] = dependency{State: state, Breaker: &breakerJSON{
			Requests: counts.Requests, Successes: counts.TotalSuccesses, Failures: counts.TotalFailures,
			ConsecutiveFailures: counts.ConsecutiveFailures,
		}}
		switch {
		case state == "open":
			rd.Status = statusUnhealthy
		case state == "half-open" && rd.Status == statusHealthy:
			rd.Status = statusDegraded
		}
	}
	return rd
}

// fence runs when a heartbeat finds this incarnation claimed by a peer: it
// opens a stream for a new incarnation, heartbeats as the new incarnation,
// then closes every socket of the old one with 1012 so clients reconnect.
func (in *instance) fence(loops context.Context, by string) {
	if !in.fencing.TryLock() {
		return // draining, or another fence is running
	}
	defer in.fencing.Unlock()
	ctx, cancel := context.WithTimeout(loops, in.cfg.ShutdownTimeout)
	defer cancel()

	old := in.identity()
	oldWriter := in.currentWriter()
	next := newIdentity(old.InstanceID, old.Address)
	base := in.logger()
	logger := base.With().Str("reclaimed_by", by).Str("new_incarnation", next.Incarnation).Logger()
	logger.Warn().Msg("fenced: a peer reclaimed this incarnation; rejoining as a new one")

	w, err := in.log.NewWriter(ctx, next.Stream())
	if err != nil {
		logger.Error().Err(err).Msg("fence failed: cannot open the new incarnation's stream")
		return
	}
	in.mu.Lock()
	in.id, in.writer = next, w
	stopOld := in.stopFollow
	in.mu.Unlock()

	// The new incarnation's record must exist, and put the instance back in
	// the instance index, before the socket server accepts a connection
	// under it. Otherwise a crash in between would leave connections that
	// no peer looks for, because only indexed instances are watched.
	if err := in.beat.Rejoin(next, w); err != nil {
		logger.Error().Err(err).Msg("heartbeat rejoin failed")
	}
	if err := in.reclaimer.Rejoin(next, w); err != nil {
		logger.Error().Err(err).Msg("reclaimer rejoin failed")
	}
	if err := in.beat.Beat(ctx, schemas.StateStarting); err != nil {
		logger.Error().Err(err).Msg("first heartbeat of the new incarnation failed")
	}
	if err := in.sock.Fence(ctx, next.Incarnation); err != nil {
		logger.Error().Err(err).Msg("closing the fenced connections did not finish")
	}
	if err := in.beat.Beat(ctx, schemas.StateServing); err != nil {
		logger.Error().Err(err).Msg("serving heartbeat of the new incarnation failed")
	}

	if err := oldWriter.Close(ctx); err != nil {
		logger.Warn().Err(err).Msg("closing the fenced incarnation's stream timed out")
	}
	if in.publisher != nil {
		if stopOld != nil {
			stopOld()
		}
		in.publisher.Enqueue(old.Stream())
		in.followStream(loops, next.Stream())
	}
	logger.Info().Msg("rejoined as a new incarnation")
}

// drain stops the instance in a fixed order within the shutdown timeout.
// It heartbeats draining, refuses upgrades and closes every socket with 1001,
// appending each one's disconnected event, publishes the client messages
// still queued, and heartbeats stopped. Then it closes the feed's
// subscribers with 1001, stops the HTTP server and the log writer, and
// publishes the stream's tail.
// drainBeatTimeout bounds each heartbeat of the drain, and drainReserve is
// the part of the shutdown timeout kept for stopping the publisher and
// closing the backend after the stream's tail is published.
const (
	drainBeatTimeout = 2 * time.Second
	drainReserve     = 500 * time.Millisecond
)

func (in *instance) drain() error {
	ctx, cancel := context.WithTimeout(context.Background(), in.cfg.ShutdownTimeout)
	defer cancel()
	logger := in.logger()
	var errs []error

	// A heartbeat gets a short share of the timeout, so a store that is
	// down cannot use it all up before the sockets are closed. A heartbeat
	// still queued when that share ends is committed with the rest.
	beat := func(state string) error {
		bctx, cancel := context.WithTimeout(ctx, drainBeatTimeout)
		defer cancel()
		if err := in.beat.Beat(bctx, state); err != nil && !errors.Is(err, eventlog.ErrQueued) {
			return err
		}
		return nil
	}
	in.beat.SetState(schemas.StateDraining)
	if err := beat(schemas.StateDraining); err != nil {
		errs = append(errs, fmt.Errorf("heartbeat draining: %w", err))
	}
	if err := in.sock.Shutdown(ctx, socket.ServerShutdown("instance stopping")); err != nil {
		errs = append(errs, fmt.Errorf("close sockets: %w", err))
	}
	in.closeMessages(ctx)
	if err := beat(schemas.StateStopped); err != nil {
		errs = append(errs, fmt.Errorf("heartbeat stopped: %w", err))
	}
	// http.Server.Shutdown does not close hijacked connections, so the
	// feed closes its subscribers itself, with 1001.
	if err := in.feed.Shutdown(ctx); err != nil {
		errs = append(errs, fmt.Errorf("close feed subscribers: %w", err))
	}
	if err := in.http.Shutdown(ctx); err != nil {
		errs = append(errs, fmt.Errorf("stop HTTP server: %w", err))
	}
	w := in.currentWriter()
	if err := w.Close(ctx); err != nil {
		errs = append(errs, fmt.Errorf("close log writer: %w", err))
	}
	if in.publisher != nil {
		in.mu.Lock()
		stop := in.stopFollow
		in.mu.Unlock()
		if stop != nil {
			stop()
		}
		in.follows.Wait()
		// No peer reclaims a stream that stopped cleanly, so its tail is
		// published here or by this instance id's next start.
		// Leave a reserve of the timeout for the teardown that follows.
		pctx := ctx
		if deadline, ok := ctx.Deadline(); ok {
			var cancel context.CancelFunc
			pctx, cancel = context.WithDeadline(ctx, deadline.Add(-drainReserve))
			defer cancel()
		}
		if err := in.publisher.Drain(pctx, w.Stream()); err != nil {
			logger.Warn().Err(err).Msg("events of this incarnation not yet published; the next start publishes them")
		}
	}
	err := errors.Join(errs...)
	if err != nil {
		logger.Error().Err(err).Msg("drain incomplete")
	} else {
		logger.Info().Msg("drained and stopped")
	}
	return err
}

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
	"github.com/virtufin/websocketmanager/internal/embedded"
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

// instance is one running incarnation with everything it owns.
type instance struct {
	cfg    serveConfig
	logger zerolog.Logger // with instance_id and incarnation
	// baseLogger has no instance fields, for packages that add their own.
	baseLogger zerolog.Logger
	id         workers.Identity

	store  *embedded.Store
	log    *eventlog.Log
	writer *eventlog.Writer
	sock   *socket.Server
	beat   *workers.Heartbeat
	http   *http.Server
}

// serve runs an instance until ctx ends, then drains it. Startup order:
// open the store, repair and catch up the log, reclaim what earlier
// incarnations left, heartbeat starting, accept clients, heartbeat serving.
func serve(ctx context.Context, cfg serveConfig, logger zerolog.Logger, stdout io.Writer) error {
	store, err := embedded.Open(cfg.DataDir, embedded.Options{})
	if errors.Is(err, embedded.ErrLocked) {
		return fmt.Errorf("%w: another wsm is serving from %s; stop it or pick another --data-dir", err, cfg.DataDir)
	}
	if err != nil {
		return err
	}
	defer store.Close()

	opts := logOptions()
	opts.Logger = logger
	log := eventlog.Open(store, opts)

	// This process holds the store's lock, so no stream has a live writer.
	if _, err := log.RepairTails(ctx, func(string) bool { return true }); err != nil {
		return err
	}
	if n, err := log.CatchUpAll(ctx); err != nil {
		return err
	} else if n > 0 {
		logger.Info().Int("events", n).Msg("caught up views with the log")
	}

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.Listen, err)
	}
	defer ln.Close()

	inst := &instance{cfg: cfg, store: store, log: log, baseLogger: logger}
	inst.id = workers.Identity{
		InstanceID:  cfg.InstanceID,
		Incarnation: uuid.Must(uuid.NewV7()).String(),
		StartedAt:   time.Now().UTC(),
		Address:     ln.Addr().String(),
		Version:     version,
	}
	inst.logger = logger.With().Str("instance_id", inst.id.InstanceID).Str("incarnation", inst.id.Incarnation).Logger()

	inst.writer, err = log.NewWriter(ctx, eventlog.StreamName(inst.id.InstanceID, inst.id.Incarnation))
	if err != nil {
		return err
	}
	defer inst.writer.Close(context.Background())

	if err := inst.reclaimOnStart(ctx); err != nil {
		return err
	}
	return inst.run(ctx, ln, stdout)
}

// reclaimOnStart reclaims the connections of earlier incarnations of this
// instance id. On the embedded backend this process holds the store's lock,
// so every other instance in the index is dead too and is reclaimed as well.
func (in *instance) reclaimOnStart(ctx context.Context) error {
	r := &workers.Reclaimer{ID: in.id, Log: in.writer, Store: in.store, Logger: in.logger}
	if _, err := r.ReclaimPrevious(ctx); err != nil {
		return fmt.Errorf("reclaim previous incarnation: %w", err)
	}
	ids, err := projections.Reader{Store: in.store}.InstanceIDs(ctx)
	if err != nil {
		return err
	}
	for _, id := range ids {
		if id == in.id.InstanceID {
			continue
		}
		if _, err := r.ReclaimInstance(ctx, id); err != nil && !errors.Is(err, workers.ErrClaimLost) {
			return fmt.Errorf("reclaim instance %s: %w", id, err)
		}
	}
	return nil
}

// appender adapts the log writer to the socket server.
type appender struct{ w *eventlog.Writer }

func (a appender) Append(ctx context.Context, events ...*event.Event) error {
	_, err := a.w.Append(ctx, events...)
	return err
}

func (in *instance) run(ctx context.Context, ln net.Listener, stdout io.Writer) error {
	cfg := in.cfg
	auth, err := socket.NewAuthenticator(socket.AuthConfig{Secret: []byte(cfg.JWTSecret), AllowAnonymous: cfg.AllowAnonymous})
	if err != nil {
		return err
	}
	in.sock, err = socket.New(socket.Config{
		InstanceID:     in.id.InstanceID,
		Incarnation:    in.id.Incarnation,
		PingInterval:   cfg.PingInterval,
		PongTimeout:    cfg.PongTimeout,
		ReadLimit:      cfg.ReadLimit,
		SendQueue:      cfg.SendQueue,
		MaxConnections: cfg.MaxConnections,
	}, auth, appender{in.writer}, in.baseLogger)
	if err != nil {
		return err
	}

	in.beat = &workers.Heartbeat{
		ID:       in.id,
		Log:      in.writer,
		Views:    projections.Reader{Store: in.store},
		Interval: cfg.HeartbeatInterval,
		Count:    in.sock.Count,
		Logger:   in.logger,
		OnFenced: func(by string) {
			// One process holds the embedded store, so no other instance
			// can claim this incarnation. Reaching here means the views
			// were edited by hand.
			in.logger.Error().Str("reclaimed_by", by).Msg("instance record claimed by another incarnation")
		},
	}
	if err := in.beat.Beat(ctx, schemas.StateStarting); err != nil {
		return err
	}

	a := &api{store: in.store, log: in.log, views: projections.Reader{Store: in.store}, logger: in.logger}
	a.ready = func(ctx context.Context) readiness {
		st := checkStore(ctx, in.store)
		rd := readiness{Status: statusHealthy, Dependencies: map[string]dependency{"statestore": st}}
		if st.State != "up" {
			rd.Status = statusUnhealthy
		}
		return rd
	}
	mux := http.NewServeMux()
	mux.Handle("GET /ws", in.sock)
	a.routes(mux)
	in.http = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}

	serveErr := make(chan error, 1)
	go func() { serveErr <- in.http.Serve(ln) }()

	if err := writeAddrFile(cfg.DataDir, ln.Addr().String()); err != nil {
		in.logger.Warn().Err(err).Msg("cannot write the address file; replay and rebuild will not reach this service")
	}
	defer os.Remove(filepath.Join(cfg.DataDir, addrFile))

	if err := in.beat.Beat(ctx, schemas.StateServing); err != nil {
		return err
	}
	beatCtx, stopBeats := context.WithCancel(context.Background())
	var beats sync.WaitGroup
	beats.Add(1)
	go func() {
		defer beats.Done()
		in.beat.Run(beatCtx)
	}()

	in.logger.Info().Str("address", ln.Addr().String()).Str("data_dir", cfg.DataDir).Msg("wsm serving")
	fmt.Fprintf(stdout, "wsm serving: clients connect to ws://%s/ws, API at http://%s/v1/connections\n", ln.Addr(), ln.Addr())

	var runErr error
	select {
	case <-ctx.Done():
		in.logger.Info().Msg("shutdown signal received; draining")
	case runErr = <-serveErr:
		in.logger.Error().Err(runErr).Msg("HTTP server failed; draining")
	}
	stopBeats()
	beats.Wait()
	return errors.Join(runErr, in.drain())
}

// drain stops the instance in a fixed order within the shutdown timeout:
// heartbeat draining, refuse upgrades and close every socket with 1001,
// appending each one's disconnected event, heartbeat stopped, then stop the HTTP
// server and the log writer.
func (in *instance) drain() error {
	ctx, cancel := context.WithTimeout(context.Background(), in.cfg.ShutdownTimeout)
	defer cancel()
	var errs []error

	if err := in.beat.Beat(ctx, schemas.StateDraining); err != nil {
		errs = append(errs, fmt.Errorf("heartbeat draining: %w", err))
	}
	if err := in.sock.Shutdown(ctx, socket.ServerShutdown("instance stopping")); err != nil {
		errs = append(errs, fmt.Errorf("close sockets: %w", err))
	}
	if err := in.beat.Beat(ctx, schemas.StateStopped); err != nil {
		errs = append(errs, fmt.Errorf("heartbeat stopped: %w", err))
	}
	if err := in.http.Shutdown(ctx); err != nil {
		errs = append(errs, fmt.Errorf("stop HTTP server: %w", err))
	}
	if err := in.writer.Close(ctx); err != nil {
		errs = append(errs, fmt.Errorf("close log writer: %w", err))
	}
	err := errors.Join(errs...)
	if err != nil {
		in.logger.Error().Err(err).Msg("drain incomplete")
	} else {
		in.logger.Info().Msg("drained and stopped")
	}
	return err
}

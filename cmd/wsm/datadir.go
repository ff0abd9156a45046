package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/rs/zerolog"

	"github.com/virtufin/websocketmanager/eventlog"
	"github.com/virtufin/websocketmanager/internal/dapr"
	"github.com/virtufin/websocketmanager/internal/embedded"
	"github.com/virtufin/websocketmanager/projections"
	"github.com/virtufin/websocketmanager/schemas"
)

// addrFile is written into the data directory by a running service, so that
// replay and rebuild can reach it while it holds the store file's lock.
const addrFile = "wsm.addr"

func writeAddrFile(dataDir, addr string) error {
	tmp := filepath.Join(dataDir, addrFile+".tmp")
	if err := os.WriteFile(tmp, []byte("http://"+addr+"\n"), 0o640); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dataDir, addrFile))
}

func readAddrFile(dataDir string) (string, error) {
	raw, err := os.ReadFile(filepath.Join(dataDir, addrFile))
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(raw)), nil
}

// logOptions are the event log options every process uses: validation on
// append, and the view projection.
func logOptions() eventlog.Options {
	return eventlog.Options{Validate: schemas.Validate, Projector: projections.Projector{}}
}

// storeFlags select the store that replay and rebuild read.
type storeFlags struct {
	backend     string
	dataDir     string
	daprAddress string
	stateStore  string
}

func bindStoreFlags(fs *flag.FlagSet, env func(string) string) *storeFlags {
	f := &storeFlags{}
	fs.StringVar(&f.backend, "backend", envOr(env, "WSM_BACKEND", "embedded"), "where the log is: embedded or dapr (env WSM_BACKEND)")
	fs.StringVar(&f.dataDir, "data-dir", envOr(env, "WSM_DATA_DIR", "wsm-data"), "data directory of the embedded store (env WSM_DATA_DIR)")
	fs.StringVar(&f.daprAddress, "dapr-address", envOr(env, "WSM_DAPR_ADDRESS", daprAddressFromEnv(env)),
		"gRPC address of a Dapr sidecar, for --backend dapr (env WSM_DAPR_ADDRESS)")
	fs.StringVar(&f.stateStore, "state-store", envOr(env, "WSM_STATE_STORE", "statestore"), "name of the Dapr state store component (env WSM_STATE_STORE)")
	return f
}

func (f *storeFlags) validate() error {
	if f.backend != "embedded" && f.backend != "dapr" {
		return fmt.Errorf("--backend %q: unknown; want embedded or dapr", f.backend)
	}
	return nil
}

// withLog runs local on the log of the selected store. The embedded store is
// opened read-only; when a running service holds its file, remote runs with
// the service's base URL instead. On Dapr the log is read through the
// sidecar, which any number of readers can share with a running fleet.
func withLog(ctx context.Context, f *storeFlags, local func(*eventlog.Log) error, remote func(baseURL string) error) error {
	if f.backend == "dapr" {
		client, err := dapr.Open(ctx, dapr.Config{Address: f.daprAddress, StateStore: f.stateStore, NoPubSub: true}, zerolog.Nop())
		if err != nil {
			return err
		}
		defer client.Close()
		return local(eventlog.Open(client.Store(), logOptions()))
	}

	dataDir := f.dataDir
	store, err := embedded.Open(dataDir, embedded.Options{ReadOnly: true})
	if errors.Is(err, embedded.ErrLocked) {
		base, aerr := readAddrFile(dataDir)
		if aerr != nil {
			return fmt.Errorf("%w, and its address file is unreadable: %v", err, aerr)
		}
		return remote(base)
	}
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("no store in %s: start wsm serve with --data-dir %s first, or pass the right --data-dir", dataDir, dataDir)
	}
	if err != nil {
		return err
	}
	defer store.Close()
	return local(eventlog.Open(store, logOptions()))
}

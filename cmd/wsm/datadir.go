package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/virtufin/websocketmanager/eventlog"
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

// withLog runs local on the data directory's store opened read-only. When a
// running service holds the file, it runs remote with the service's base URL
// instead.
func withLog(ctx context.Context, dataDir string, local func(*eventlog.Log) error, remote func(baseURL string) error) error {
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

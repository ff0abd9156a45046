package main

import (
	"bytes"
	"context"
	"flag"
	"io"
	"strings"
	"testing"
	"time"
)

func envMap(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func parseServe(t *testing.T, args []string, env map[string]string) (serveConfig, error) {
	t.Helper()
	cfg := defaultServeConfig()
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	envErr := bindServeFlags(fs, &cfg, envMap(env))
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	cfg.resolveInstanceID(envMap(env))
	if envErr != nil {
		return cfg, envErr
	}
	return cfg, cfg.Validate()
}

func TestServeConfigDefaultsValid(t *testing.T) {
	cfg, err := parseServe(t, nil, map[string]string{"HOSTNAME": "pod-a"})
	if err != nil {
		t.Fatalf("defaults: %v", err)
	}
	if cfg.InstanceID != "pod-a" {
		t.Errorf("instance id = %q, want HOSTNAME pod-a", cfg.InstanceID)
	}
	if cfg.ReadLimit != 64<<10 || cfg.HeartbeatInterval != 5*time.Second || cfg.HeartbeatTTL != 15*time.Second {
		t.Errorf("defaults changed: read limit %d, heartbeat %v, ttl %v", cfg.ReadLimit, cfg.HeartbeatInterval, cfg.HeartbeatTTL)
	}
}

func TestServeConfigPrecedence(t *testing.T) {
	env := map[string]string{"WSM_LISTEN": "127.0.0.1:9000", "WSM_READ_LIMIT": "1024", "HOSTNAME": "h"}
	cfg, err := parseServe(t, []string{"--read-limit", "2048"}, env)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != "127.0.0.1:9000" {
		t.Errorf("listen = %q, want the env value", cfg.Listen)
	}
	if cfg.ReadLimit != 2048 {
		t.Errorf("read limit = %d, want the flag value 2048 over the env value", cfg.ReadLimit)
	}
}

func TestServeConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want []string // every fragment must appear in the one error
	}{
		{"public without auth", []string{"--listen", "0.0.0.0:8080"}, nil, []string{"not a loopback address", "WSM_JWT_SECRET", "WSM_API_TOKEN"}},
		{"public without API token", []string{"--listen", "0.0.0.0:8080"}, map[string]string{"WSM_JWT_SECRET": strings.Repeat("s", 32)},
			[]string{"--listen 0.0.0.0:8080 is not a loopback address, and WSM_API_TOKEN is not set"}},
		{"short API token", nil, map[string]string{"WSM_API_TOKEN": "short"}, []string{"WSM_API_TOKEN is 5 bytes"}},
		{"empty host without auth", []string{"--listen", ":8080"}, nil, []string{"not a loopback address"}},
		{"ttl below interval", []string{"--heartbeat-ttl", "1s"}, nil, []string{"--heartbeat-ttl 1s must be longer"}},
		{"several at once", []string{"--read-limit", "10", "--send-queue", "0", "--log-format", "xml"}, nil,
			[]string{"--read-limit 10", "--send-queue 0", "--log-format \"xml\""}},
		{"bad env duration", nil, map[string]string{"WSM_PING_INTERVAL": "soon"}, []string{"WSM_PING_INTERVAL=\"soon\": invalid duration"}},
		{"unknown backend", []string{"--backend", "etcd"}, nil, []string{"--backend \"etcd\""}},
		{"pprof off loopback", []string{"--listen", "0.0.0.0:8080", "--allow-anonymous", "--pprof"}, map[string]string{"WSM_API_TOKEN": testAPIToken}, []string{"--pprof on 0.0.0.0:8080"}},
		{"short jwt secret", nil, map[string]string{"WSM_JWT_SECRET": "too-short"}, []string{"WSM_JWT_SECRET has 9 bytes", "at least 32"}},
		{"slash in instance id", []string{"--instance-id", "a/b"}, nil, []string{"must not contain '/'"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseServe(t, tt.args, tt.env)
			if err == nil {
				t.Fatal("got no error")
			}
			for _, frag := range tt.want {
				if !strings.Contains(err.Error(), frag) {
					t.Errorf("error %q does not contain %q", err, frag)
				}
			}
		})
	}
}

func TestServeConfigPublicWithAuth(t *testing.T) {
	for _, tt := range []struct {
		name string
		args []string
		env  map[string]string
	}{
		{"secret", []string{"--listen", "0.0.0.0:8080"}, map[string]string{"WSM_JWT_SECRET": strings.Repeat("s", 32), "WSM_API_TOKEN": testAPIToken}},
		{"anonymous flag", []string{"--listen", "0.0.0.0:8080", "--allow-anonymous"}, map[string]string{"WSM_API_TOKEN": testAPIToken}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := parseServe(t, tt.args, tt.env); err != nil {
				t.Errorf("got %v, want no error", err)
			}
		})
	}
}

func TestRunBadUsage(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"unknown command", []string{"frobnicate"}, `unknown command "frobnicate"`},
		{"unknown flag", []string{"serve", "--no-such-flag"}, "flag provided but not defined: -no-such-flag"},
		{"public listen", []string{"serve", "--listen", "0.0.0.0:0"}, "not a loopback address"},
		{"replay bad type", []string{"replay", "--type", "connection.exploded"}, "unknown event type"},
		{"replay bad since", []string{"replay", "--since", "last tuesday"}, "--since \"last tuesday\""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), tt.args, &stdout, &stderr, envMap(nil))
			if code != exitBadUsage {
				t.Errorf("exit code = %d, want %d", code, exitBadUsage)
			}
			if !strings.Contains(stderr.String(), tt.want) {
				t.Errorf("stderr %q does not contain %q", stderr.String(), tt.want)
			}
		})
	}
}

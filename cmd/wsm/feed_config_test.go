package main

import (
	"strings"
	"testing"
	"time"

	"github.com/virtufin/websocketmanager/socket"
	"github.com/virtufin/websocketmanager/workers"
)

func TestFeedAndMessagesConfigDefaults(t *testing.T) {
	cfg, err := parseServe(t, nil, map[string]string{"HOSTNAME": "pod-a"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MessagesTopic != workers.DefaultMessagesTopic {
		t.Errorf("messages topic %q, want %q", cfg.MessagesTopic, workers.DefaultMessagesTopic)
	}
	if cfg.FeedBuffer != socket.DefaultFeedBuffer {
		t.Errorf("feed buffer %d, want %d", cfg.FeedBuffer, socket.DefaultFeedBuffer)
	}
	if cfg.FeedSlowTimeout != socket.DefaultFeedSlowTimeout {
		t.Errorf("feed slow timeout %v, want %v", cfg.FeedSlowTimeout, socket.DefaultFeedSlowTimeout)
	}
	if cfg.FeedSocketBuffer != 0 {
		t.Errorf("feed socket buffer %d, want 0 for the system default", cfg.FeedSocketBuffer)
	}
}

func TestFeedAndMessagesConfigFlags(t *testing.T) {
	env := map[string]string{"HOSTNAME": "pod-a", "WSM_MESSAGES_TOPIC": "from-env", "WSM_FEED_BUFFER": "64"}
	cfg, err := parseServe(t, []string{"--messages-topic", "from-flag", "--feed-slow-timeout", "2s", "--feed-socket-buffer", "65536"}, env)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.MessagesTopic != "from-flag" {
		t.Errorf("messages topic %q, want the flag value over the env value", cfg.MessagesTopic)
	}
	if cfg.FeedBuffer != 64 {
		t.Errorf("feed buffer %d, want 64 from WSM_FEED_BUFFER", cfg.FeedBuffer)
	}
	if cfg.FeedSlowTimeout != 2*time.Second {
		t.Errorf("feed slow timeout %v, want 2s", cfg.FeedSlowTimeout)
	}
	if cfg.FeedSocketBuffer != 65536 {
		t.Errorf("feed socket buffer %d, want 65536", cfg.FeedSocketBuffer)
	}
}

func TestFeedAndMessagesConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"empty messages topic", []string{"--messages-topic", ""}, "--messages-topic"},
		{"zero feed buffer", []string{"--feed-buffer", "0"}, "--feed-buffer"},
		{"zero slow timeout", []string{"--feed-slow-timeout", "0s"}, "--feed-slow-timeout"},
		{"negative socket buffer", []string{"--feed-socket-buffer", "-1"}, "--feed-socket-buffer"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseServe(t, tt.args, map[string]string{"HOSTNAME": "pod-a"})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %v, want one naming %s", err, tt.want)
			}
		})
	}
}

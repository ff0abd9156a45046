package socket

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestConfigDefaults(t *testing.T) {
	got := baseConfig().withDefaults()

	tests := []struct {
		name      string
		got, want any
	}{
		{"PingInterval", got.PingInterval, 20 * time.Second},
		{"PongTimeout", got.PongTimeout, 10 * time.Second},
		{"ReadLimit", got.ReadLimit, 64 << 10},
		{"SendQueue", got.SendQueue, 256},
		{"MaxConnections", got.MaxConnections, 50_000},
		{"WriteTimeout", got.WriteTimeout, 10 * time.Second},
		{"KickCode", got.KickCode, uint16(4000)},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("default %s: got %v, want %v", tt.name, tt.got, tt.want)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name      string
		mutate    func(*Config)
		wantParts []string // substrings of the joined error; nil means valid
	}{
		{"defaults", func(*Config) {}, nil},
		{"missing ids", func(c *Config) { c.InstanceID, c.Incarnation = "", "" }, []string{"InstanceID", "Incarnation"}},
		{"negative durations", func(c *Config) {
			c.PingInterval = -time.Second
			c.PongTimeout = -time.Second
			c.WriteTimeout = -time.Second
		}, []string{"PingInterval", "PongTimeout", "WriteTimeout"}},
		{"negative sizes", func(c *Config) {
			c.ReadLimit = -1
			c.SendQueue = -1
			c.MaxConnections = -1
		}, []string{"ReadLimit", "SendQueue", "MaxConnections"}},
		{"kick code outside private range", func(c *Config) { c.KickCode = 1000 }, []string{"KickCode 1000"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := baseConfig()
			tt.mutate(&cfg)

			err := cfg.Validate()

			if tt.wantParts == nil {
				if err != nil {
					t.Fatalf("Validate: got %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("Validate: got %v, want ErrInvalidConfig", err)
			}
			for _, part := range tt.wantParts {
				if !strings.Contains(err.Error(), part) {
					t.Errorf("Validate error %q does not mention %s", err, part)
				}
			}
		})
	}
}

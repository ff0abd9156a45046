package daprtest

import (
	"net"
	"strconv"
	"strings"
	"testing"
)

func TestDeleteKeysByPrefix(t *testing.T) {
	r := RedisServer(t)
	c, err := dialRESP(r.Addr, deleteTimeout)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := range 2500 {
		key := "mine||k" + strings.Repeat("x", i%7) + string(rune('a'+i%26)) + "-" + strconv.Itoa(i)
		if _, err := c.do("SET", key, "v"); err != nil {
			t.Fatalf("SET %s: %v", key, err)
		}
	}
	for _, key := range []string{"other||k", "min", "mine-no-separator"} {
		if _, err := c.do("SET", key, "v"); err != nil {
			t.Fatalf("SET %s: %v", key, err)
		}
	}

	if err := DeleteKeys(r.Addr, "mine||"); err != nil {
		t.Fatalf("DeleteKeys: %v", err)
	}
	tests := []struct {
		prefix string
		want   int
	}{{"mine||", 0}, {"other||", 1}, {"min", 2}}
	for _, tt := range tests {
		got, err := CountKeys(r.Addr, tt.prefix)
		if err != nil {
			t.Fatalf("CountKeys(%s): %v", tt.prefix, err)
		}
		if got != tt.want {
			t.Errorf("CountKeys(%s) = %d, want %d", tt.prefix, got, tt.want)
		}
	}

	for _, bad := range []string{"", "a*", "a?", "[a]"} {
		if err := DeleteKeys(r.Addr, bad); err == nil {
			t.Errorf("DeleteKeys(%q) succeeded, want a refusal", bad)
		}
	}
}

func TestComponentYAML(t *testing.T) {
	got := componentYAML(Component{Name: "statestore", Type: "state.redis", Metadata: map[string]string{
		"redisHost": "127.0.0.1:6379", "keyPrefix": `odd "prefix"`,
	}})
	want := `apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: "statestore"
spec:
  type: "state.redis"
  version: v1
  metadata:
  - name: "keyPrefix"
    value: "odd \"prefix\""
  - name: "redisHost"
    value: "127.0.0.1:6379"
`
	if got != want {
		t.Errorf("componentYAML =\n%s\nwant\n%s", got, want)
	}
}

// TestStartRetriesLostPort takes the sidecar's internal gRPC port before
// Start, as a process that binds a just-picked port would, and checks
// that Start moves to new ports and the sidecar gets healthy.
func TestStartRetriesLostPort(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a Dapr sidecar")
	}
	d := Prepare(t, Options{})
	takenPort := d.ports[2]
	l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(takenPort))
	if err != nil {
		t.Skipf("the picked port %d was taken before the test could take it: %v", takenPort, err)
	}
	defer l.Close()

	d.Start(t)
	if d.ports[2] == takenPort {
		t.Errorf("internal gRPC port: still %d, want a new one after losing it", takenPort)
	}
	if !strings.Contains(d.Output(), "address already in use") {
		t.Errorf("daprd output does not show the lost port; the test took nothing from it:\n%s", d.output.tail(2<<10))
	}
}

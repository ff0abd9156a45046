package daprtest

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Bounds of DeleteKeys: a test writes thousands of keys at most, and a
// SCAN pass over the shared Redis takes a few round trips per thousand.
const (
	deleteTimeout = 10 * time.Second
	maxScanRounds = 10000
)

// DeleteKeys deletes every key of the Redis at addr that starts with prefix.
// The prefix must not contain glob characters (* ? [ ] \).
func DeleteKeys(addr, prefix string) error {
	if prefix == "" || strings.ContainsAny(prefix, `*?[]\`) {
		return fmt.Errorf("daprtest: refusing to delete keys by prefix %q", prefix)
	}
	c, err := dialRESP(addr, deleteTimeout)
	if err != nil {
		return err
	}
	defer c.Close()

	cursor := "0"
	for range maxScanRounds {
		reply, err := c.do("SCAN", cursor, "MATCH", prefix+"*", "COUNT", "1000")
		if err != nil {
			return err
		}
		parts, ok := reply.([]any)
		if !ok || len(parts) != 2 {
			return fmt.Errorf("daprtest: SCAN replied %v", reply)
		}
		cursor, _ = parts[0].(string)
		keys, _ := parts[1].([]any)
		if len(keys) > 0 {
			args := []string{"DEL"}
			for _, k := range keys {
				s, _ := k.(string)
				args = append(args, s)
			}
			if _, err := c.do(args...); err != nil {
				return err
			}
		}
		if cursor == "0" {
			return nil
		}
	}
	return fmt.Errorf("daprtest: SCAN of %s* did not finish in %d rounds", prefix, maxScanRounds)
}

// CountKeys returns the number of keys of the Redis at addr that start with
// prefix, for tests that check what a component wrote.
func CountKeys(addr, prefix string) (int, error) {
	c, err := dialRESP(addr, deleteTimeout)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	n := 0
	cursor := "0"
	for range maxScanRounds {
		reply, err := c.do("SCAN", cursor, "MATCH", prefix+"*", "COUNT", "1000")
		if err != nil {
			return 0, err
		}
		parts, ok := reply.([]any)
		if !ok || len(parts) != 2 {
			return 0, fmt.Errorf("daprtest: SCAN replied %v", reply)
		}
		cursor, _ = parts[0].(string)
		keys, _ := parts[1].([]any)
		n += len(keys)
		if cursor == "0" {
			return n, nil
		}
	}
	return 0, fmt.Errorf("daprtest: SCAN of %s* did not finish in %d rounds", prefix, maxScanRounds)
}

// respConn speaks just enough of the Redis protocol for the harness:
// commands as arrays of bulk strings, and the replies SCAN, DEL and PING give.
type respConn struct {
	net.Conn
	r *bufio.Reader
}

func dialRESP(addr string, timeout time.Duration) (*respConn, error) {
	conn, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, fmt.Errorf("daprtest: connect to Redis at %s: %w", addr, err)
	}
	conn.SetDeadline(time.Now().Add(timeout))
	return &respConn{Conn: conn, r: bufio.NewReader(conn)}, nil
}

func (c *respConn) do(args ...string) (any, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := c.Write([]byte(b.String())); err != nil {
		return nil, fmt.Errorf("daprtest: Redis %s: %w", args[0], err)
	}
	reply, err := c.read(0)
	if err != nil {
		return nil, fmt.Errorf("daprtest: Redis %s: %w", args[0], err)
	}
	return reply, nil
}

// read parses one reply: a simple string, an integer (as a string), a bulk
// string, or an array of those. depth bounds nesting.
func (c *respConn) read(depth int) (any, error) {
	if depth > 4 {
		return nil, errors.New("reply nested too deep")
	}
	line, err := c.r.ReadString('\n')
	if err != nil {
		return nil, err
	}
	line = strings.TrimSuffix(line, "\r\n")
	if line == "" {
		return nil, errors.New("empty reply line")
	}
	switch line[0] {
	case '+', ':':
		return line[1:], nil
	case '-':
		return nil, errors.New(line[1:])
	case '$':
		n, err := strconv.Atoi(line[1:])
		if err != nil || n < -1 || n > 64<<20 {
			return nil, fmt.Errorf("bad bulk length %q", line)
		}
		if n == -1 {
			return nil, nil
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(c.r, buf); err != nil {
			return nil, err
		}
		return string(buf[:n]), nil
	case '*':
		n, err := strconv.Atoi(line[1:])
		if err != nil || n < -1 || n > 1<<20 {
			return nil, fmt.Errorf("bad array length %q", line)
		}
		out := make([]any, 0, max(n, 0))
		for range n {
			v, err := c.read(depth + 1)
			if err != nil {
				return nil, err
			}
			out = append(out, v)
		}
		return out, nil
	}
	return nil, fmt.Errorf("unknown reply %q", line)
}

// Redis is a private redis-server of one test, for outage tests: Pause
// stops the process (SIGSTOP), so clients hang as on a frozen server, and
// Resume continues it.
type Redis struct {
	Addr   string
	cmd    *exec.Cmd
	exited chan struct{}
	output *syncBuffer
}

// RedisServer starts a redis-server on a free loopback port, without
// persistence, and kills it when the test ends.
func RedisServer(t testing.TB) *Redis {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatalf("no redis-server on PATH (Debian: apt-get install redis-server): %v", err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("pick a free port: %v", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()

	r := &Redis{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), output: &syncBuffer{}}
	r.cmd = exec.Command(bin, "--bind", "127.0.0.1", "--port", strconv.Itoa(port),
		"--save", "", "--appendonly", "no", "--dir", t.TempDir())
	r.cmd.Stdout = r.output
	r.cmd.Stderr = r.output
	if err := r.cmd.Start(); err != nil {
		t.Fatalf("start redis-server: %v", err)
	}
	r.exited = make(chan struct{})
	go func() {
		r.cmd.Wait()
		close(r.exited)
	}()
	t.Cleanup(func() {
		r.cmd.Process.Signal(syscall.SIGCONT)
		r.cmd.Process.Kill()
		<-r.exited
	})

	deadline := time.Now().Add(startTimeout)
	for {
		if r.ping() == nil {
			return r
		}
		select {
		case <-r.exited:
			t.Fatalf("redis-server exited before it responded to PING:\n%s", r.output.tail(4<<10))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("redis-server on %s does not respond to PING after %v:\n%s", r.Addr, startTimeout, r.output.tail(4<<10))
		}
		time.Sleep(pollInterval)
	}
}

func (r *Redis) ping() error {
	c, err := dialRESP(r.Addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	reply, err := c.do("PING")
	if err != nil {
		return err
	}
	if reply != "PONG" {
		return fmt.Errorf("PING replied %v", reply)
	}
	return nil
}

// Pause stops the server process with SIGSTOP.
func (r *Redis) Pause(t testing.TB) {
	t.Helper()
	if err := r.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatalf("pause redis-server: %v", err)
	}
}

// Resume continues a paused server with SIGCONT.
func (r *Redis) Resume(t testing.TB) {
	t.Helper()
	if err := r.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatalf("resume redis-server: %v", err)
	}
}

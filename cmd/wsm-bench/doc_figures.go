package main

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// figure is one comparison of docs/benchmarks.md: a wsm measurement
// against a baseline measured in the same run, per row.
type figure struct {
	Title string
	// Steps name the suite steps whose commands the section shows.
	Steps []string
	About string // what is measured and how, in Markdown
	Unit  string
	// LowerIsBetter marks units of time, where a ratio below 1 is good.
	LowerIsBetter bool
	Rows          func(rs *results) []row
}

// row pairs one wsm benchmark with its baseline.
type row struct {
	Label    string
	Measured string // benchmark name
	Baseline string // benchmark name; empty when BaselineFrom is set
	// BaselineFrom computes the baseline of each round from the measured
	// run itself, for a baseline that is a configured time, not a run.
	BaselineFrom func(r result) (float64, bool)
	BaselineName string // name of the baseline in the tables
	// Target is the ratio to work toward, 0 for none. With
	// LowerIsBetter the ratio should be at most Target, else at least.
	Target float64
}

// expand returns one row per distinct value of the first group of pattern
// among the benchmark names, sorted numerically, built by mk.
func expand(rs *results, pattern string, mk func(value string) row) []row {
	re := regexp.MustCompile(pattern)
	var values []string
	for _, r := range rs.list {
		if m := re.FindStringSubmatch(r.Name); m != nil && !slices.Contains(values, m[1]) {
			values = append(values, m[1])
		}
	}
	slices.SortFunc(values, func(a, b string) int {
		x, _ := strconv.Atoi(a)
		y, _ := strconv.Atoi(b)
		return x - y
	})
	out := make([]row, 0, len(values))
	for _, v := range values {
		out = append(out, mk(v))
	}
	return out
}

func fixedRows(rows ...row) func(*results) []row {
	return func(*results) []row { return rows }
}

// thousands formats a decimal count with commas, such as 10,000.
func thousands(s string) string {
	n, err := strconv.Atoi(s)
	if err != nil {
		return s
	}
	str := strconv.Itoa(n)
	for i := len(str) - 3; i > 0; i -= 3 {
		str = str[:i] + "," + str[i:]
	}
	return str
}

var figures = []figure{
	{
		Title: "Idle connections per GiB of server memory",
		Steps: []string{"load-memory"},
		About: "`.ci/bench-load` starts a fresh server, reads its `VmRSS`, opens N idle anonymous " +
			"clients with `wsm-bench hold` from 16 source addresses (127.0.0.1 to 127.0.0.16), waits until " +
			"the server holds N more descriptors and then 10 s more, and reads `VmRSS` again. " +
			"Connections per GiB = N ÷ growth of `VmRSS`. wsm runs `serve --allow-anonymous` on the " +
			"embedded backend, so each connection is a durable `connected` event folded into the views. " +
			"The baseline is `wsm-bench baseline`, gws alone with wsm's read limit and ping interval, " +
			"sending one welcome frame. The *at peak* rows use the highest RSS of the connect storm " +
			"(`VmHWM`) instead: wsm returns its free heap to the OS 5 s after the storm " +
			"(`--release-memory-after`), so its settled figure is lower than its peak. " +
			"The large run holds the open-files limit minus 500 connections, at most 50,000, " +
			"because the server and the client process each need a descriptor per connection; " +
			"50,000 needs `ulimit -n` above 50,500.",
		Unit: "conns/GiB",
		Rows: func(rs *results) []row {
			settled := expand(rs, `^BenchmarkIdleConns/conns=(\d+)/server=wsm$`, func(n string) row {
				return row{
					Label:        thousands(n) + " connections, settled",
					Measured:     "BenchmarkIdleConns/conns=" + n + "/server=wsm",
					Baseline:     "BenchmarkIdleConns/conns=" + n + "/server=raw-gws",
					BaselineName: "raw gws",
					Target:       0.7,
				}
			})
			return settled
		},
	},
	{
		Title: "Idle connections per GiB at the peak of the connect storm",
		Steps: []string{"load-memory"},
		About: "The same runs as above, with the growth of the peak RSS (`VmHWM`) in place of the settled RSS.",
		Unit:  "conns/GiB-at-peak",
		Rows: func(rs *results) []row {
			return expand(rs, `^BenchmarkIdleConns/conns=(\d+)/server=wsm$`, func(n string) row {
				return row{
					Label:        thousands(n) + " connections, peak",
					Measured:     "BenchmarkIdleConns/conns=" + n + "/server=wsm",
					Baseline:     "BenchmarkIdleConns/conns=" + n + "/server=raw-gws",
					BaselineName: "raw gws",
				}
			})
		},
	},
	{
		Title: "Connect and close cycles per second, separate client process",
		Steps: []string{"load-churn"},
		About: "`wsm-bench churn` with 32 workers, unpaced, against a fresh server: connect, wait for " +
			"the welcome, close handshake. wsm on the embedded backend writes a durable `connected` " +
			"event before each welcome and a `disconnected` event after each close. The baseline is " +
			"`wsm-bench baseline`, raw gws handshake plus close.",
		Unit: "cycles/s",
		Rows: fixedRows(row{
			Label:        "embedded backend",
			Measured:     "BenchmarkChurn/concurrency=32/server=wsm",
			Baseline:     "BenchmarkChurn/concurrency=32/server=raw-gws",
			BaselineName: "raw gws",
			Target:       0.3,
		}),
	},
	{
		Title: "Connect and close cycles per second, in one process",
		Steps: []string{"connect"},
		About: "`BenchmarkConnectCycle` in `cmd/wsm/bench_test.go`: 32 concurrent gws clients in the " +
			"test process cycle connect, welcome, close against `serve` started in the same process, " +
			"on the embedded backend and on the Dapr backend (its own daprd over the Redis on " +
			"127.0.0.1:6379). The baseline is gws alone with the same read limit.",
		Unit: "cycles/s",
		Rows: fixedRows(
			row{
				Label:        "embedded backend",
				Measured:     "BenchmarkConnectCycle/wsm-embedded",
				Baseline:     "BenchmarkConnectCycle/raw-gws",
				BaselineName: "raw gws",
				Target:       0.3,
			},
			row{
				Label:        "Dapr backend, Redis",
				Measured:     "BenchmarkConnectCycle/wsm-dapr",
				Baseline:     "BenchmarkConnectCycle/raw-gws",
				BaselineName: "raw gws",
			},
		),
	},
	{
		Title: "Messages per second from the backend API to clients",
		Steps: []string{"deliver"},
		About: "`.ci/bench-deliver` holds clients on a fresh server. `wsm-bench deliver` POSTs " +
			"messages to the API as fast as a bounded number of senders can and counts the frames the " +
			"clients receive. It sends to one connection, to one user with several connections, and to " +
			"every connection of the instance. The baseline is `wsm-bench baseline` serving the same three " +
			"HTTP endpoints over an in-memory registry of its connections, so the ratio shows what wsm " +
			"adds to HTTP plus gws writes.",
		Unit: "msgs/s",
		Rows: func(rs *results) []row {
			var out []row
			for _, scope := range []string{"connection", "user", "instance"} {
				name := "BenchmarkDeliver/scope=" + scope + "/server="
				if len(rs.values(name+"wsm", "msgs/s")) == 0 {
					continue
				}
				out = append(out, row{
					Label:        "to one " + scope,
					Measured:     name + "wsm",
					Baseline:     name + "raw-gws",
					BaselineName: "raw gws",
					Target:       0.8,
				})
			}
			return out
		},
	},
	{
		Title: "Appended events per second against a plain file",
		Steps: []string{"append"},
		About: "`BenchmarkAppendVsFile` in `eventlog/bench_file_test.go`: 64 goroutines append one " +
			"event at a time and each append returns once its event is durable. `embedded` is the " +
			"event log's Writer on the embedded bbolt store. The baseline is a plain append-only " +
			"file with the same group-commit window: a commit takes what queued while the previous " +
			"one synced, up to 512 events. It makes one write and one fsync per commit, of the same " +
			"encoded records.",
		Unit: "events/s",
		Rows: fixedRows(row{
			Label:        "64 appenders",
			Measured:     "BenchmarkAppendVsFile/embedded",
			Baseline:     "BenchmarkAppendVsFile/plain-file",
			BaselineName: "plain file + fsync",
			Target:       0.5,
		}),
	},
	{
		Title: "Group commit against one transaction per event",
		Steps: []string{"append", "dapr-groupcommit"},
		About: "`BenchmarkGroupCommit` (embedded) and `BenchmarkGroupCommitDapr` (Dapr over Redis): " +
			"many goroutines append through one Writer with validation and projection, as `serve` " +
			"does. The baseline is the same Writer with `MaxBatch: 1`.",
		Unit: "events/s",
		Rows: fixedRows(
			row{
				Label:        "embedded, 64 appenders",
				Measured:     "BenchmarkGroupCommit/group/appenders=64",
				Baseline:     "BenchmarkGroupCommit/one-per-commit/appenders=64",
				BaselineName: "one per commit",
			},
			row{
				Label:        "Dapr, 32 appenders",
				Measured:     "BenchmarkGroupCommitDapr/group",
				Baseline:     "BenchmarkGroupCommitDapr/one-per-commit",
				BaselineName: "one per commit",
			},
		),
	},
	{
		Title: "Time from SIGKILL to the last reclaim",
		Steps: []string{"reclaim"},
		About: "`BenchmarkReclaimAfterKill` in `cmd/wsm/reclaim_bench_test.go` starts two " +
			"`wsm serve --backend dapr` processes with their own sidecars over one Redis, with " +
			"`--heartbeat-interval 1s --heartbeat-ttl 3s --reclaim-interval 1s`. It connects N " +
			"clients to one, SIGKILLs it and its sidecar, and times until the survivor lists none of " +
			"the victim's connections and its log holds a `connection.reclaimed` event for each. The " +
			"baseline is the configured heartbeat TTL plus one reclaim interval. The target is that " +
			"plus one second per 10,000 connections.",
		Unit:          "s/reclaim",
		LowerIsBetter: true,
		Rows: func(rs *results) []row {
			return expand(rs, `^BenchmarkReclaimAfterKill/conns=(\d+)$`, func(n string) row {
				conns, _ := strconv.Atoi(n)
				var base float64
				if vs := rs.values("BenchmarkReclaimAfterKill/conns="+n, "s/reclaim"); len(vs) > 0 {
					xs := rs.values("BenchmarkReclaimAfterKill/conns="+n, "x-baseline")
					if len(xs) > 0 && xs[0] > 0 {
						base = vs[0] / xs[0]
					}
				}
				target := 0.0
				if base > 0 {
					target = (base + float64(conns)/10000) / base
				}
				return row{
					Label:        thousands(n) + " connections",
					Measured:     "BenchmarkReclaimAfterKill/conns=" + n,
					BaselineName: "TTL + one interval",
					BaselineFrom: func(r result) (float64, bool) {
						x, ok := r.Metrics["x-baseline"]
						if !ok || x == 0 {
							return 0, false
						}
						return r.Metrics["s/reclaim"] / x, true
					},
					Target: target,
				}
			})
		},
	},
	{
		Title: "Replay and rebuild throughput over the whole log",
		Steps: []string{"replay"},
		About: "`.ci/bench-replay` generates an embedded log with `wsm-bench genlog`: events of a " +
			"simulated fleet of 8 instances, built, validated and appended through the Writer as " +
			"`serve` does. Then it times whole processes over the stopped data dir: `wsm replay` to " +
			"/dev/null, `wsm rebuild --verify`, which folds the log into fresh views and compares " +
			"them with the live ones, and `wsm rebuild`, which also writes the keys that differ. The " +
			"baseline reads the same events from a plain JSON-lines file, exported once with " +
			"`wsm replay`, and decodes each line with encoding/json (`wsm-bench readlines`).",
		Unit: "events/s",
		Rows: func(rs *results) []row {
			var out []row
			for _, tool := range []string{"replay", "rebuild-verify", "rebuild"} {
				out = append(out, expand(rs, `^BenchmarkLogScan/events=(\d+)/tool=`+tool+`$`, func(n string) row {
					return row{
						Label:        fmt.Sprintf("wsm %s, %s events", strings.Replace(tool, "-", " --", 1), thousands(n)),
						Measured:     "BenchmarkLogScan/events=" + n + "/tool=" + tool,
						Baseline:     "BenchmarkLogScan/events=" + n + "/tool=plain-file",
						BaselineName: "JSON lines file",
					}
				})...)
			}
			return out
		},
	},
	{
		Title: "Frame writes through the socket layer",
		Steps: []string{"micro"},
		About: "`BenchmarkSend` in `socket/send_bench_test.go` writes text frames through the " +
			"socket server's send queue (`Server.Send`) to a real gws client over loopback, " +
			"against gws's `WriteMessage` on a bare server connection. An op is a frame the " +
			"client received.",
		Unit: "MB/s",
		Rows: fixedRows(
			row{Label: "frame write, 64 B", Measured: "BenchmarkSend/64B/socket", Baseline: "BenchmarkSend/64B/raw-gws", BaselineName: "raw gws"},
			row{Label: "frame write, 1 KiB", Measured: "BenchmarkSend/1KiB/socket", Baseline: "BenchmarkSend/1KiB/raw-gws", BaselineName: "raw gws"},
		),
	},
	{
		Title: "Event encoding against plain JSON",
		Steps: []string{"micro"},
		About: "`BenchmarkEventEncode` in `schemas/event_bench_test.go` builds an event with the " +
			"`schemas` constructor, validates it against its JSON Schema and encodes the stored " +
			"record, against `encoding/json` of the same fields. The unit is time per event, so a " +
			"ratio above 1 means wsm's path takes longer.",
		Unit:          "ns/op",
		LowerIsBetter: true,
		Rows: fixedRows(
			row{Label: "connected event", Measured: "BenchmarkEventEncode/connected/schemas", Baseline: "BenchmarkEventEncode/connected/plain-json", BaselineName: "encoding/json"},
			row{Label: "disconnected event", Measured: "BenchmarkEventEncode/disconnected/schemas", Baseline: "BenchmarkEventEncode/disconnected/plain-json", BaselineName: "encoding/json"},
		),
	},
}

package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// result is one line of Go benchmark output: one run of one benchmark.
type result struct {
	Name       string             // without the -GOMAXPROCS suffix
	Procs      int                // the -N suffix go test adds, 0 when absent
	Iterations int64              // iterations go test ran
	Metrics    map[string]float64 // value per unit, such as "ns/op" or "events/s"
	Step       string             // the suite step whose output held the line
}

// results holds every benchmark line of a suite run in the order read.
type results struct {
	list []result
	// cpu is the "cpu:" header of go test output, the model name of the
	// machine's processor.
	cpu string
}

var procsSuffix = regexp.MustCompile(`-(\d+)$`)

// parseBenchLine parses one line in Go's benchmark format:
//
//	BenchmarkName/sub-2   1000   123 ns/op   45.6 events/s
//
// It returns false for any other line.
func parseBenchLine(line string) (result, bool) {
	fields := strings.Fields(line)
	if len(fields) < 4 || !strings.HasPrefix(fields[0], "Benchmark") || len(fields)%2 != 0 {
		return result{}, false
	}
	iterations, err := strconv.ParseInt(fields[1], 10, 64)
	if err != nil {
		return result{}, false
	}
	r := result{Name: fields[0], Iterations: iterations, Metrics: map[string]float64{}}
	if m := procsSuffix.FindStringSubmatch(r.Name); m != nil {
		r.Procs, _ = strconv.Atoi(m[1])
		r.Name = strings.TrimSuffix(r.Name, m[0])
	}
	for i := 2; i+1 < len(fields); i += 2 {
		v, err := strconv.ParseFloat(fields[i], 64)
		if err != nil {
			return result{}, false
		}
		r.Metrics[fields[i+1]] = v
	}
	return r, true
}

// readResults reads every *.txt file in dir, each the output of the suite
// step named by the file's base name.
func readResults(dir string) (*results, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.txt"))
	if err != nil {
		return nil, err
	}
	sort.Strings(files)
	rs := &results{}
	for _, name := range files {
		f, err := os.Open(name)
		if err != nil {
			return nil, err
		}
		err = rs.read(f, strings.TrimSuffix(filepath.Base(name), ".txt"))
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", name, err)
		}
	}
	return rs, nil
}

func (rs *results) read(r io.Reader, step string) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if cpu, ok := strings.CutPrefix(line, "cpu: "); ok && rs.cpu == "" {
			rs.cpu = strings.TrimSpace(cpu)
			continue
		}
		if res, ok := parseBenchLine(line); ok {
			res.Step = step
			rs.list = append(rs.list, res)
		}
	}
	return sc.Err()
}

// values returns the values of unit from every run of the benchmark name,
// in the order the runs appear.
func (rs *results) values(name, unit string) []float64 {
	var out []float64
	for _, r := range rs.list {
		if r.Name != name {
			continue
		}
		if v, ok := r.Metrics[unit]; ok {
			out = append(out, v)
		}
	}
	return out
}

// names returns the distinct benchmark names of a step, in first-seen order.
func (rs *results) names(step string) []string {
	var out []string
	for _, r := range rs.list {
		if r.Step == step && !slices.Contains(out, r.Name) {
			out = append(out, r.Name)
		}
	}
	return out
}

// median returns the median of vs, or 0 for an empty slice, which the
// callers rule out first.
func median(vs []float64) float64 {
	if len(vs) == 0 {
		return 0
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// meta is the machine and run description the suite writes as KEY=VALUE
// lines to meta.env.
type meta map[string]string

func readMeta(path string) (meta, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	m := meta{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if ok {
			m[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	return m, sc.Err()
}

// step is one line of steps.tsv: a suite step, its command, how long it
// took, its exit code and the one-minute load average when it started.
type step struct {
	Name, Command string
	Seconds       float64
	ExitCode      int
	Load          string
}

func readSteps(path string) ([]step, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []step
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		cols := strings.Split(sc.Text(), "\t")
		if len(cols) != 5 {
			continue
		}
		secs, _ := strconv.ParseFloat(cols[2], 64)
		code, _ := strconv.Atoi(cols[3])
		out = append(out, step{Name: cols[0], Command: cols[1], Seconds: secs, ExitCode: code, Load: cols[4]})
	}
	return out, sc.Err()
}

package main

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
)

// measuredRow is a row with the values of each round and their ratios.
type measuredRow struct {
	row
	Measured, Baseline, Ratios []float64
}

// measure pairs the rounds of r: the i-th run of the measured benchmark
// with the i-th run of its baseline.
func measure(rs *results, f figure, r row) measuredRow {
	m := measuredRow{row: r}
	var runs []result
	for _, res := range rs.list {
		if res.Name == r.Measured {
			if _, ok := res.Metrics[f.Unit]; ok {
				runs = append(runs, res)
			}
		}
	}
	var baseline []float64
	if r.BaselineFrom == nil {
		baseline = rs.values(r.Baseline, f.Unit)
	}
	for i, run := range runs {
		var b float64
		switch {
		case r.BaselineFrom != nil:
			v, ok := r.BaselineFrom(run)
			if !ok {
				continue
			}
			b = v
		case i < len(baseline):
			b = baseline[i]
		default:
			continue
		}
		v := run.Metrics[f.Unit]
		m.Measured = append(m.Measured, v)
		m.Baseline = append(m.Baseline, b)
		if b != 0 {
			m.Ratios = append(m.Ratios, v/b)
		}
	}
	return m
}

// status compares the median ratio with the row's target.
func (m measuredRow) status(lowerIsBetter bool) string {
	if m.Target == 0 || len(m.Ratios) == 0 {
		return ""
	}
	r := median(m.Ratios)
	if (lowerIsBetter && r <= m.Target) || (!lowerIsBetter && r >= m.Target) {
		return "meets target"
	}
	return "**misses target**"
}

func (m measuredRow) targetText(lowerIsBetter bool) string {
	if m.Target == 0 {
		return "none"
	}
	if lowerIsBetter {
		return "≤ " + ratioText(m.Target)
	}
	return "≥ " + ratioText(m.Target)
}

// number formats a figure with thousands separators above 1,000 and three
// significant digits below.
func number(v float64) string {
	switch {
	case math.Abs(v) >= 999.5:
		return thousands(fmt.Sprintf("%.0f", v))
	case math.Abs(v) >= 100:
		return fmt.Sprintf("%.0f", v)
	case math.Abs(v) >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

func ratioText(v float64) string { return fmt.Sprintf("%.2f", v) }

func rangeText(vs []float64) string {
	if len(vs) < 2 {
		return ""
	}
	return fmt.Sprintf(" (%s to %s)", ratioText(slices.Min(vs)), ratioText(slices.Max(vs)))
}

// renderDoc writes docs/benchmarks.md from the suite's results.
func renderDoc(w io.Writer, rs *results, md meta, steps []step) error {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }

	p("# Benchmarks\n\n")
	p("`just bench` wrote this file: it runs `.ci/bench-suite`, which measures every figure below ")
	p("against a baseline in the same run on the same machine, and then `wsm-bench doc`. Do not edit ")
	p("it by hand; change the suite or `cmd/wsm-bench/doc_figures.go` and run `just bench` again. ")
	p("Absolute rates drift on a shared machine, so compare ratios between machines, not rates. ")
	p("Profiles and the analyses behind the design choices are in [performance.md](performance.md).\n\n")

	p("## Machine and run\n\n")
	p("| | |\n|---|---|\n")
	cpu := md["cpu"]
	if cpu == "" {
		cpu = rs.cpu
	}
	for _, kv := range [][2]string{
		{"date", md["date"]},
		{"commit", "`" + md["commit"] + "`"},
		{"CPU", cpu},
		{"cores", md["cores"]},
		{"GOMAXPROCS", md["gomaxprocs"] + " for every server and benchmark"},
		{"memory", md["memory"]},
		{"Go", md["go"]},
		{"kernel", md["kernel"]},
		{"open files (ulimit -n)", md["nofile"]},
		{"disk of the temporary files", md["disk"]},
		{"rounds", md["rounds"]},
		{"suite time", md["elapsed"]},
	} {
		if kv[1] != "" && kv[1] != "``" {
			p("| %s | %s |\n", kv[0], kv[1])
		}
	}
	p("\n")

	var all []struct {
		f figure
		m measuredRow
	}
	for _, f := range figures {
		rows := f.Rows(rs)
		if len(rows) == 0 {
			// Keep the figure in the summary, marked as not measured.
			rows = []row{{Label: "all cases"}}
		}
		for _, r := range rows {
			all = append(all, struct {
				f figure
				m measuredRow
			}{f, measure(rs, f, r)})
		}
	}

	p("## Summary\n\n")
	p("Medians over the rounds; the ratio is wsm ÷ baseline in the unit given, with the lowest and ")
	p("highest round in brackets.\n\n")
	p("| figure | unit | wsm | baseline | ratio | target | |\n|---|---|---|---|---|---|---|\n")
	for _, e := range all {
		if len(e.m.Ratios) == 0 {
			p("| %s: %s | %s | not measured | | | %s | |\n", e.f.Title, e.m.Label, e.f.Unit, e.m.targetText(e.f.LowerIsBetter))
			continue
		}
		p("| %s: %s | %s | %s | %s (%s) | **%s**%s | %s | %s |\n", e.f.Title, e.m.Label, e.f.Unit,
			number(median(e.m.Measured)), number(median(e.m.Baseline)), e.m.BaselineName,
			ratioText(median(e.m.Ratios)), rangeText(e.m.Ratios), e.m.targetText(e.f.LowerIsBetter), e.m.status(e.f.LowerIsBetter))
	}
	p("\n")

	for _, f := range figures {
		rows := f.Rows(rs)
		p("## %s\n\n%s\n\n", f.Title, f.About)
		for _, name := range f.Steps {
			for _, s := range steps {
				if s.Name == name {
					p("```sh\n%s\n```\n\n", s.Command)
				}
			}
		}
		if len(rows) == 0 {
			p("Not measured in this run.\n\n")
			continue
		}
		for _, r := range rows {
			m := measure(rs, f, r)
			p("**%s** (%s)\n\n", r.Label, f.Unit)
			if len(m.Ratios) == 0 {
				p("Not measured in this run.\n\n")
				continue
			}
			p("| round | wsm | %s | ratio |\n|---|---|---|---|\n", r.BaselineName)
			for i := range m.Ratios {
				p("| %d | %s | %s | %s |\n", i+1, number(m.Measured[i]), number(m.Baseline[i]), ratioText(m.Ratios[i]))
			}
			p("| median | %s | %s | **%s** |\n\n", number(median(m.Measured)), number(median(m.Baseline)), ratioText(median(m.Ratios)))
			if r.Target != 0 {
				p("Target: %s. %s.\n\n", m.targetText(f.LowerIsBetter), strings.Trim(m.status(f.LowerIsBetter), "*"))
			}
		}
	}

	renderMicro(p, rs)
	renderSteps(p, steps)

	_, err := io.WriteString(w, b.String())
	return err
}

// renderMicro lists every benchmark of the micro step with its medians.
func renderMicro(p func(string, ...any), rs *results) {
	names := rs.names("micro")
	if len(names) == 0 {
		return
	}
	p("## Micro-benchmarks of the hot paths\n\n")
	p("Medians over the rounds, every benchmark with `ReportAllocs`. One op is what the benchmark's ")
	p("comment says: one event encoded and validated, one fold, one `Append` call, one frame received.\n\n")
	p("| benchmark | ns/op | B/op | allocs/op | other |\n|---|---|---|---|---|\n")
	for _, name := range names {
		units := map[string][]float64{}
		var order []string
		for _, r := range rs.list {
			if r.Name != name || r.Step != "micro" {
				continue
			}
			for u, v := range r.Metrics {
				if _, ok := units[u]; !ok {
					order = append(order, u)
				}
				units[u] = append(units[u], v)
			}
		}
		slices.Sort(order)
		var other []string
		for _, u := range order {
			if u == "ns/op" || u == "B/op" || u == "allocs/op" {
				continue
			}
			other = append(other, number(median(units[u]))+" "+u)
		}
		cell := func(u string) string {
			if vs, ok := units[u]; ok {
				return number(median(vs))
			}
			return ""
		}
		p("| `%s` | %s | %s | %s | %s |\n", name, cell("ns/op"), cell("B/op"), cell("allocs/op"), strings.Join(other, ", "))
	}
	p("\n")
}

func renderSteps(p func(string, ...any), steps []step) {
	if len(steps) == 0 {
		return
	}
	p("## Steps of this run\n\n")
	p("| step | seconds | exit code | load average at start |\n|---|---|---|---|\n")
	for _, s := range steps {
		p("| %s | %.0f | %d | %s |\n", s.Name, s.Seconds, s.ExitCode, s.Load)
	}
	p("\nA step with a non-zero exit code failed or ran out of its time bound; its figures are ")
	p("missing above or cover fewer rounds.\n")
}

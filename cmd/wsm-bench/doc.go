package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// runDoc renders docs/benchmarks.md from the results directory of
// .ci/bench-suite: step outputs in Go benchmark format (*.txt), the
// machine description (meta.env) and the step log (steps.tsv).
func runDoc(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("wsm-bench doc", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("results", "", "results directory written by .ci/bench-suite (required)")
	out := fs.String("out", "docs/benchmarks.md", "file to write; - for standard output")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" {
		return &usageError{errors.New("--results is required: the directory .ci/bench-suite wrote")}
	}
	if fs.NArg() > 0 {
		return &usageError{fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}

	rs, err := readResults(*dir)
	if err != nil {
		return err
	}
	if len(rs.list) == 0 {
		return fmt.Errorf("no benchmark lines in %s/*.txt; did the suite run?", *dir)
	}
	md, err := readMeta(filepath.Join(*dir, "meta.env"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	steps, err := readSteps(filepath.Join(*dir, "steps.tsv"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}

	if *out == "-" {
		return renderDoc(stdout, rs, md, steps)
	}
	tmp := *out + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	if err := renderDoc(f, rs, md, steps); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, *out); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "wsm-bench doc: wrote %s from %d benchmark lines\n", *out, len(rs.list))
	return nil
}

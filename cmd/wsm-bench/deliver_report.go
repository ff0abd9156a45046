package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"text/tabwriter"
	"time"
)

// deliverReport is the result of a deliver run, printed as a table or
// JSON.
type deliverReport struct {
	Command      string `json:"command"`
	Scope        string `json:"scope"`
	Target       string `json:"target"`
	Endpoint     string `json:"endpoint,omitempty"`
	Clients      int    `json:"clients"`
	Senders      int    `json:"senders"`
	Window       int    `json:"window"`
	PayloadBytes int    `json:"payloadBytes"`
	Interrupted  bool   `json:"interrupted"`
	// Stalled is set when the senders stopped early because a client
	// received nothing for the drain timeout while it was behind.
	Stalled bool `json:"stalled"`
	// Rejected is set when the senders stopped at the first 401 or 403:
	// the API token is missing or wrong.
	Rejected bool `json:"rejected"`

	Opened     int64 `json:"opened"`
	OpenFailed int64 `json:"openFailed"`

	// SendSeconds is how long the senders ran. ElapsedSec runs from the
	// first request to the last frame a client counted.
	SendSeconds float64 `json:"sendSeconds"`
	ElapsedSec  float64 `json:"elapsedSeconds"`
	Requests    int64   `json:"requests"`
	Succeeded   int64   `json:"succeeded"`
	Failed      int64   `json:"failed"`
	CutOff      int64   `json:"cutOffByEnd"`

	// Every client expects one frame per request that succeeded.
	FramesExpected int64 `json:"framesExpected"`
	FramesReceived int64 `json:"framesReceived"`
	// FramesLost counts expected frames that had not arrived when the
	// drain ended. FramesSurplus counts frames beyond the expected ones,
	// such as a frame of a request that failed at the client after the
	// server sent it. FramesUnexpected counts frames of another opcode or
	// size than the payload.
	FramesLost       int64 `json:"framesLost"`
	FramesSurplus    int64 `json:"framesSurplus"`
	FramesUnexpected int64 `json:"framesUnexpected"`
	ClientsDropped   int64 `json:"clientsDropped"`
	ClosedCleanly    int64 `json:"closedCleanly"`
	CloseTimeouts    int64 `json:"closeTimeouts"`

	// MessagesPerSec is FramesReceived over ElapsedSec: messages delivered
	// to clients per second.
	MessagesPerSec float64 `json:"messagesPerSecond"`
	RequestsPerSec float64 `json:"requestsPerSecond"`
	// Request is the latency of the requests that succeeded.
	Request     latency           `json:"requestLatency"`
	Connect     latency           `json:"connectLatency"`
	Failures    map[string]int    `json:"failures"`
	FirstErrors map[string]string `json:"firstErrors,omitempty"`
}

func newDeliverReport(cfg *deliverConfig) *deliverReport {
	return &deliverReport{
		Command: "deliver", Scope: cfg.scope, Target: cfg.client.urls[0],
		Clients: cfg.clients, Senders: cfg.senders, Window: cfg.window, PayloadBytes: cfg.payloadBytes,
		Failures: map[string]int{}, FirstErrors: map[string]string{},
	}
}

// addFailure records a failure of the run that is not one of a request.
func (r *deliverReport) addFailure(cause, firstError string) {
	r.Failures[cause]++
	if _, ok := r.FirstErrors[cause]; !ok {
		r.FirstErrors[cause] = firstError
	}
}

// addOpen records how the clients opened. Failures are prefixed "open: ".
func (r *deliverReport) addOpen(st *stats, clients []*deliverClient) {
	st.mu.Lock()
	defer st.mu.Unlock()
	r.Opened = int64(len(clients))
	r.OpenFailed = int64(r.Clients - len(clients))
	r.Connect = summarize(st.connect)
	for cause, n := range st.failures {
		r.Failures["open: "+cause] += n
		r.FirstErrors["open: "+cause] = st.firstErrors[cause]
	}
}

// addSend records the requests and counts the frames of every client.
func (r *deliverReport) addSend(run *deliverRun, sendStart, sendEnd time.Duration) {
	st := run.send
	st.mu.Lock()
	defer st.mu.Unlock()
	r.Stalled = st.stalled.Load()
	r.Rejected = st.rejected.Load()
	r.Requests = st.attempted.Load()
	r.Succeeded = st.succeeded.Load()
	r.CutOff = st.cutOff.Load()
	r.Request = summarize(st.latencies)
	for cause, n := range st.failures {
		r.Failed += int64(n)
		r.Failures[cause] += n
		r.FirstErrors[cause] = st.firstErrors[cause]
	}

	lastFrame := sendStart
	for _, c := range run.clients {
		got := c.received.Load()
		r.FramesReceived += got
		r.FramesUnexpected += c.unexpected.Load()
		if got < r.Succeeded {
			r.FramesLost += r.Succeeded - got
		} else {
			r.FramesSurplus += got - r.Succeeded
		}
		if c.dropped.Load() {
			r.ClientsDropped++
		}
		lastFrame = max(lastFrame, time.Duration(c.lastFrame.Load()))
	}
	r.FramesExpected = r.Succeeded * int64(len(run.clients))

	r.SendSeconds = (sendEnd - sendStart).Seconds()
	elapsed := lastFrame - sendStart
	if r.FramesReceived == 0 {
		elapsed = sendEnd - sendStart
	}
	r.ElapsedSec = elapsed.Seconds()
	if elapsed > 0 {
		r.MessagesPerSec = float64(r.FramesReceived) / elapsed.Seconds()
	}
	if r.SendSeconds > 0 {
		r.RequestsPerSec = float64(r.Succeeded) / r.SendSeconds
	}
}

// failure returns an error when the run did not deliver every message it
// sent to every client, so that the exit code reports it to a script.
func (r *deliverReport) failure() error {
	var problems []error
	if r.OpenFailed > 0 {
		problems = append(problems, fmt.Errorf("%d of %d clients failed to open", r.OpenFailed, r.Clients))
	}
	if r.Failed > 0 {
		problems = append(problems, fmt.Errorf("%d of %d requests failed", r.Failed, r.Requests))
	}
	if r.FramesLost > 0 {
		problems = append(problems, fmt.Errorf("%d of %d frames lost", r.FramesLost, r.FramesExpected))
	}
	if r.FramesUnexpected > 0 {
		problems = append(problems, fmt.Errorf("%d frames of another opcode or size than the payload", r.FramesUnexpected))
	}
	if r.ClientsDropped > 0 {
		problems = append(problems, fmt.Errorf("the server closed %d clients during the run", r.ClientsDropped))
	}
	if r.Stalled {
		problems = append(problems, errors.New("the senders stopped early because a client stopped receiving"))
	}
	if r.Rejected {
		problems = append(problems, errors.New("the API rejected the token (401 or 403), so sending stopped: pass --api-token or set WSM_API_TOKEN to the server's token"))
	}
	if len(problems) == 0 && r.Succeeded == 0 && !r.Interrupted {
		problems = append(problems, errors.New("no request succeeded"))
	}
	if len(problems) > 0 {
		return fmt.Errorf("%w; the report lists the causes", errors.Join(problems...))
	}
	return nil
}

// write prints r as JSON or as an aligned table.
func (r *deliverReport) write(w io.Writer, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "command\t%s\n", r.Command)
	fmt.Fprintf(tw, "scope\t%s\n", r.Scope)
	fmt.Fprintf(tw, "target\t%s\n", r.Target)
	if r.Endpoint != "" {
		fmt.Fprintf(tw, "endpoint\t%s\n", r.Endpoint)
	}
	fmt.Fprintf(tw, "clients\t%d opened, %d failed\n", r.Opened, r.OpenFailed)
	fmt.Fprintf(tw, "senders, window\t%d, %d messages\n", r.Senders, r.Window)
	fmt.Fprintf(tw, "payload\t%d bytes\n", r.PayloadBytes)
	if r.Interrupted {
		fmt.Fprintf(tw, "interrupted\tyes\n")
	}
	if r.Stalled {
		fmt.Fprintf(tw, "stalled\tyes\n")
	}
	if r.Rejected {
		fmt.Fprintf(tw, "token rejected\tyes\n")
	}
	fmt.Fprintf(tw, "sending\t%.2fs\n", r.SendSeconds)
	fmt.Fprintf(tw, "first request to last frame\t%.2fs\n", r.ElapsedSec)
	fmt.Fprintf(tw, "requests\t%d\n", r.Requests)
	fmt.Fprintf(tw, "succeeded\t%d\n", r.Succeeded)
	fmt.Fprintf(tw, "failed\t%d\n", r.Failed)
	fmt.Fprintf(tw, "cut off by the end\t%d\n", r.CutOff)
	fmt.Fprintf(tw, "frames expected\t%d\n", r.FramesExpected)
	fmt.Fprintf(tw, "frames received\t%d\n", r.FramesReceived)
	fmt.Fprintf(tw, "frames lost\t%d\n", r.FramesLost)
	fmt.Fprintf(tw, "frames beyond expected\t%d\n", r.FramesSurplus)
	fmt.Fprintf(tw, "frames unexpected\t%d\n", r.FramesUnexpected)
	fmt.Fprintf(tw, "clients dropped\t%d\n", r.ClientsDropped)
	fmt.Fprintf(tw, "messages delivered/s\t%.1f\n", r.MessagesPerSec)
	fmt.Fprintf(tw, "requests/s\t%.1f\n", r.RequestsPerSec)
	fmt.Fprintf(tw, "\nlatency\tcount\tp50\tp90\tp99\tmax\n")
	row := func(name string, l latency) {
		fmt.Fprintf(tw, "%s\t%d\t%.2fms\t%.2fms\t%.2fms\t%.2fms\n", name, l.Count, l.P50, l.P90, l.P99, l.Max)
	}
	row("API request", r.Request)
	row("connect (dial to welcome)", r.Connect)
	if len(r.Failures) > 0 {
		fmt.Fprintf(tw, "\nfailure\tcount\tfirst error\n")
		for _, cause := range slices.Sorted(maps.Keys(r.Failures)) {
			fmt.Fprintf(tw, "%s\t%d\t%s\n", cause, r.Failures[cause], r.FirstErrors[cause])
		}
	}
	return tw.Flush()
}

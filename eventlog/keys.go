package eventlog

import (
	"fmt"
	"strings"

	"github.com/virtufin/websocketmanager/schemas"
)

// Key layout of the log in the state store. Every key starts with KeyPrefix;
// the views live beside it under other prefixes.
const (
	KeyPrefix  = "websocketmanager/log/"
	streamsKey = KeyPrefix + "streams"
)

func streamPrefix(stream string) string  { return KeyPrefix + "streams/" + stream + "/" }
func headKey(stream string) string       { return streamPrefix(stream) + "head" }
func checkpointKey(stream string) string { return streamPrefix(stream) + "projected" }
func eventKey(stream string, seq uint64) string {
	return streamPrefix(stream) + "events/" + schemas.FormatSequence(seq)
}

// StreamName joins an instance id and an incarnation id into the name of that
// incarnation's stream.
func StreamName(instanceID, incarnation string) string { return instanceID + "/" + incarnation }

// SplitStreamName returns the instance id and incarnation of a stream name.
func SplitStreamName(stream string) (instanceID, incarnation string) {
	instanceID, incarnation, _ = strings.Cut(stream, "/")
	return instanceID, incarnation
}

func validateStreamName(stream string) error {
	inst, inc := SplitStreamName(stream)
	if inst == "" || inc == "" || strings.Contains(inc, "/") {
		return fmt.Errorf("eventlog: invalid stream name %q, want <instance-id>/<incarnation>", stream)
	}
	return nil
}

package eventlog_test

import (
	"testing"

	"github.com/virtufin/websocketmanager/eventlog/eventlogtest"
)

func TestEmbeddedConformance(t *testing.T) {
	eventlogtest.Run(t, eventlogtest.Embedded)
}

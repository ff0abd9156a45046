package main

import (
	"net/http"

	"github.com/virtufin/websocketmanager/workers"
)

// instanceResultJSON is the body of a send to every connection of an
// instance.
type instanceResultJSON struct {
	Error string `json:"error,omitempty"`
	workers.InstanceResult
}

// sendToInstance sends the body as one frame to every open connection of
// an instance. It writes 200 with counts when this instance is the one
// named, 202 when it forwarded the frame to the live instance that is, and
// 404 when no live instance has that id.
func (a *api) sendToInstance(w http.ResponseWriter, r *http.Request) {
	m, ok := a.readMessage(w, r)
	if !ok {
		return
	}
	res, err := a.delivery.SendInstance(r.Context(), r.PathValue("id"), m)
	if err != nil {
		a.deliveryError(w, "send to instance", err)
		return
	}
	switch res.Outcome {
	case workers.Delivered:
		writeJSON(w, http.StatusOK, instanceResultJSON{InstanceResult: res})
	case workers.Queued:
		writeJSON(w, http.StatusAccepted, instanceResultJSON{InstanceResult: res})
	default:
		writeJSON(w, http.StatusNotFound, instanceResultJSON{Error: "instance " + res.InstanceID + ": " + res.Detail, InstanceResult: res})
	}
}

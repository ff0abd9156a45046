package main

import (
	"net/http"

	"github.com/virtufin/websocketmanager/projections"
	"github.com/virtufin/websocketmanager/schemas"
	"github.com/virtufin/websocketmanager/workers"
)

// instanceJSON is an instance record with how this instance judges it.
type instanceJSON struct {
	*projections.Instance
	// Liveness is alive, suspect, draining, stopped or reclaimed: the
	// liveness observer's state for a peer, and the record's own state
	// for this instance. Absent for a peer not observed yet.
	Liveness string `json:"liveness,omitempty"`
}

func (a *api) listInstances(w http.ResponseWriter, r *http.Request) {
	insts, err := a.views.Instances(r.Context())
	if err != nil {
		a.storeError(w, "list instances", err)
		return
	}

	peers := map[string]workers.Peer{}
	if a.peers != nil {
		for _, p := range a.peers() {
			peers[p.InstanceID] = p
		}
	}
	var self workers.Identity
	if a.self != nil {
		self = a.self()
	}

	out := make([]instanceJSON, 0, len(insts))
	for _, inst := range insts {
		ij := instanceJSON{Instance: inst}
		switch p, ok := peers[inst.InstanceID]; {
		case ok && p.Incarnation == inst.Incarnation:
			ij.Liveness = p.State.String()
		case inst.InstanceID == self.InstanceID && inst.Incarnation == self.Incarnation:
			ij.Liveness = ownLiveness(inst)
		}
		out = append(out, ij)
	}
	writeJSON(w, http.StatusOK, map[string]any{"instances": out, "count": len(out)})
}

// ownLiveness is this instance's state as its own record shows it. It
// writes its heartbeats itself, so it never suspects itself.
func ownLiveness(inst *projections.Instance) string {
	switch {
	case inst.ReclaimedBy != "":
		return workers.PeerReclaimed.String()
	case inst.State == schemas.StateStopped:
		return workers.PeerStopped.String()
	case inst.State == schemas.StateDraining:
		return workers.PeerDraining.String()
	}
	return workers.PeerAlive.String()
}

package schemas

import "time"

// Connected is the data of a connection.connected event.
type Connected struct {
	ConnectionID string    `json:"connectionId"`
	InstanceID   string    `json:"instanceId"`
	Incarnation  string    `json:"incarnation"`
	UserID       string    `json:"userId"` // empty for an anonymous connection
	RemoteAddr   string    `json:"remoteAddr"`
	UserAgent    string    `json:"userAgent"`
	Subprotocol  string    `json:"subprotocol"`
	ConnectedAt  time.Time `json:"connectedAt"`
}

// Disconnected is the data of a connection.disconnected event.
type Disconnected struct {
	ConnectionID   string    `json:"connectionId"`
	InstanceID     string    `json:"instanceId"`
	Incarnation    string    `json:"incarnation"`
	UserID         string    `json:"userId"`
	CloseCode      int       `json:"closeCode"`
	Reason         string    `json:"reason"`           // one of the CloseReason values
	Detail         string    `json:"detail,omitempty"` // free text, such as the error that ended the connection
	DisconnectedAt time.Time `json:"disconnectedAt"`
}

// Instance states carried by heartbeats.
const (
	StateStarting = "starting"
	StateServing  = "serving"
	StateDraining = "draining"
	StateStopped  = "stopped"
)

// Heartbeat is the data of an instance.heartbeat event.
type Heartbeat struct {
	InstanceID      string    `json:"instanceId"`
	Incarnation     string    `json:"incarnation"`
	State           string    `json:"state"`
	ConnectionCount int       `json:"connectionCount"`
	StartedAt       time.Time `json:"startedAt"`
	Address         string    `json:"address"`
	Version         string    `json:"version"`
}

// Reclaimed is the data of a connection.reclaimed event.
type Reclaimed struct {
	ConnectionID    string    `json:"connectionId"`
	UserID          string    `json:"userId"`
	DeadInstanceID  string    `json:"deadInstanceId"`
	DeadIncarnation string    `json:"deadIncarnation"`
	ReclaimedBy     string    `json:"reclaimedBy"` // incarnation of the reclaimer
	LastHeartbeatAt time.Time `json:"lastHeartbeatAt"`
}

// MessageReceived is the data of a message.received event.
type MessageReceived struct {
	ConnectionID string `json:"connectionId"`
	InstanceID   string `json:"instanceId"`
	Incarnation  string `json:"incarnation"`
	UserID       string `json:"userId"` // empty for an anonymous connection
	Binary       bool   `json:"binary"`
	// Payload is the text of a text message, or the bytes of a binary
	// message in standard base64 with padding (encoding/base64.StdEncoding).
	Payload    string    `json:"payload"`
	ReceivedAt time.Time `json:"receivedAt"`
}

// Close reasons recorded in Disconnected.Reason.
const (
	ReasonClientClosed   = "client_closed"   // the client sent a close frame
	ReasonConnectionLost = "connection_lost" // EOF or reset without a close frame
	ReasonPingTimeout    = "ping_timeout"    // no frame within the ping interval plus pong timeout
	ReasonServerShutdown = "server_shutdown" // the instance is draining or stopping
	ReasonKicked         = "kicked"          // closed through the backend API
	ReasonProtocolError  = "protocol_error"  // the client broke RFC 6455
	ReasonMessageTooBig  = "message_too_big" // a message exceeded the read limit
	ReasonSlowConsumer   = "slow_consumer"   // the send queue filled up
	ReasonFenced         = "fenced"          // the instance found itself reclaimed
	ReasonInternalError  = "internal_error"  // the server failed to serve the connection
)

// Reasons lists every close reason, for schemas and metric labels.
var Reasons = []string{
	ReasonClientClosed, ReasonConnectionLost, ReasonPingTimeout, ReasonServerShutdown,
	ReasonKicked, ReasonProtocolError, ReasonMessageTooBig, ReasonSlowConsumer,
	ReasonFenced, ReasonInternalError,
}

package schemas

import "github.com/cloudevents/sdk-go/v2/event"

type eventT = event.Event

func validateAny(v any) error { return Validate(v.(*event.Event)) }

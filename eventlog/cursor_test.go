package eventlog

import (
	"errors"
	"maps"
	"testing"
)

func FuzzParseCursor(f *testing.F) {
	f.Add("")
	f.Add(Cursor{"pod-a/inc-1": 3}.String())
	f.Add(Cursor{"pod-a/inc-1": 1, "pod-b/inc-2": 1<<64 - 1}.String())
	f.Add("bnVsbA")         // null
	f.Add("W10")            // []
	f.Add("eyJhL2IiOi0xfQ") // {"a/b":-1}
	f.Add("not a cursor")

	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseCursor(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidCursor) {
				t.Fatalf("ParseCursor(%q) error %v does not wrap ErrInvalidCursor", s, err)
			}
			return
		}

		// A cursor that parses encodes to a string that parses back to it.
		again, err := ParseCursor(c.String())
		if err != nil {
			t.Fatalf("ParseCursor(%q).String() = %q does not parse: %v", s, c.String(), err)
		}
		if !maps.Equal(again, c) {
			t.Fatalf("cursor %v round-trips to %v", c, again)
		}

		// Every stream in it is a valid name, and it can be advanced.
		for stream := range c {
			if err := validateStreamName(stream); err != nil {
				t.Fatalf("ParseCursor(%q) accepted stream %q: %v", s, stream, err)
			}
		}
		c.Advance(Position{Stream: "pod-a/inc-1", Seq: 1})
	})
}

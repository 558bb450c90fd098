package coherence

import (
	"fmt"
	"strconv"
)

// String returns "read" or "write".
func (a Access) String() string {
	switch a {
	case Read:
		return "read"
	case Write:
		return "write"
	}
	return "Access(" + strconv.Itoa(int(a)) + ")"
}

// String returns "invalid", "shared" or "exclusive".
func (s State) String() string {
	switch s {
	case Invalid:
		return "invalid"
	case Shared:
		return "shared"
	case Exclusive:
		return "exclusive"
	}
	return "State(" + strconv.Itoa(int(s)) + ")"
}

// String returns the action kind's name, for example "Install".
func (k ActionKind) String() string {
	switch k {
	case ActInstall:
		return "Install"
	case ActProtect:
		return "Protect"
	case ActUnprotect:
		return "Unprotect"
	case ActDrop:
		return "Drop"
	case ActWake:
		return "Wake"
	case ActHold:
		return "Hold"
	}
	return "ActionKind(" + strconv.Itoa(int(k)) + ")"
}

// String formats the action for logs and traces, without its payload.
func (a *Action) String() string {
	if a == nil {
		return "<nil action>"
	}
	s := fmt.Sprintf("%v p%d v%d", a.Kind, a.Page, a.Version)
	if a.Kind == ActInstall {
		s += fmt.Sprintf(" from=%d", a.From)
		if a.Writable {
			s += " writable"
		}
		if a.Zero {
			s += " zero"
		}
	}
	return s
}

// String formats the output as its message or its action.
func (o Output) String() string {
	switch {
	case o.Msg != nil:
		return "send " + o.Msg.String()
	case o.Act != nil:
		return "act " + o.Act.String()
	}
	return "<empty output>"
}

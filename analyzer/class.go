package analyzer

import (
	"fmt"
	"strings"
)

// Class is the verdict on one page, or, for DataRace, on racing writes to
// it. Larger values are more severe. Reports encode a class by name
// (MarshalText), never by number, so a class added later goes wherever its
// severity puts it; DataRace is last because it is the only one that is a
// correctness bug rather than a cost.
type Class int

// The classes of a page; see the package documentation for the exact rules.
const (
	// Quiet: too few transfers to matter.
	Quiet Class = iota
	// ReadMostly: mostly read copies, at most one writer. Nothing to change.
	ReadMostly
	// LockProtected: several nodes write the same bytes under a lock
	// that moves between them with the page: the lock already orders the
	// writes. Nothing to change for correctness; the page moves once per
	// hand-off of the lock.
	LockProtected
	// Contended: ownership ping-pongs for writes, but the recorded byte
	// ranges cannot tell false from true sharing.
	Contended
	// TrueSharing: several nodes write the same bytes.
	TrueSharing
	// FalseSharing: several nodes write disjoint bytes of the same page.
	FalseSharing
	// DataRace: two nodes wrote the same bytes concurrently (neither write
	// happens before the other) in the release-consistent mode, and the
	// page's home kept one of the writes. Unlike the other classes it is
	// not a page's verdict: a page has a finding of this class for each
	// variable and pair of nodes that raced, beside its own finding.
	DataRace
)

var classNames = [...]string{
	Quiet:         "quiet",
	ReadMostly:    "read-mostly",
	LockProtected: "lock-protected",
	Contended:     "contended",
	TrueSharing:   "true sharing",
	FalseSharing:  "false sharing",
	DataRace:      "data race",
}

// String returns the name of the class, e.g. "false sharing".
func (c Class) String() string {
	if c >= 0 && int(c) < len(classNames) {
		return classNames[c]
	}
	return fmt.Sprintf("Class(%d)", int(c))
}

// MarshalText encodes the class by name, so that JSON reports say
// "false sharing" rather than a number.
func (c Class) MarshalText() ([]byte, error) {
	if c < 0 || int(c) >= len(classNames) {
		return nil, fmt.Errorf("analyzer: unknown class %d", int(c))
	}
	return []byte(classNames[c]), nil
}

// UnmarshalText decodes a class name written by MarshalText.
func (c *Class) UnmarshalText(b []byte) error {
	for i, n := range classNames {
		if strings.EqualFold(string(b), n) {
			*c = Class(i)
			return nil
		}
	}
	return fmt.Errorf("analyzer: unknown class %q (want one of %s)", b, strings.Join(classNames[:], ", "))
}

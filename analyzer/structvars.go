package analyzer

import (
	"errors"
	"fmt"

	"github.com/dsmrt/dsm/internal/layout"
)

// StructVars expands a Go struct type placed at the given region offset into
// one Var per field, so that the analyzer can name the fields that falsely
// share a page and compute the padding to insert between them. v is a
// struct value or a pointer to one (a nil pointer of the right type is
// enough); only its type is used. An array of structs, or a pointer to one,
// is accepted too.
//
// Fields are named "name.Field". Nested struct fields are expanded
// recursively ("name.Inner.Field") when the nested struct has two or more
// fields that occupy bytes; a struct with a single such field, like
// sync/atomic.Uint64 or sync.Mutex, stays one variable named after the outer
// field. Arrays of such structs are expanded per element ("name[1].Field"),
// which lets a finding about two elements say how to pad the element type;
// other arrays stay one variable. Blank (_) fields and fields of size zero
// are left out: they are padding, or occupy no byte. Offsets and sizes come
// from reflect; the program-side package dsm names its allocations the
// same way.
//
// An empty name is replaced by the type's name. StructVars returns an error
// wrapping ErrNotStruct for anything but a struct, an array of structs or a
// pointer to either, and an error when the type expands to more than 4,096
// variables (register such a value as one Var).
func StructVars(name string, offset uint64, v any) ([]Var, error) {
	lv, err := layout.Vars(name, offset, v)
	if errors.Is(err, layout.ErrNotStruct) {
		return nil, fmt.Errorf("%w: %w", ErrNotStruct, err)
	}
	if err != nil {
		return nil, fmt.Errorf("analyzer: StructVars: %w", err)
	}
	out := make([]Var, len(lv))
	for i, x := range lv {
		out[i] = Var{Name: x.Name, Offset: x.Offset, Size: x.Size}
	}
	return out, nil
}

// Package layout turns a Go type placed in a DSM region into named byte
// ranges: the fields of a struct ("Stats.Hits") and the elements of an array
// of structs ("Stats[1].Hits"), each with its offset and size.
//
// It exists because two packages need the same names for the same bytes:
// the daemon's layout analyzer, which names the variables that share a page,
// and the program-side package dsm, which registers the fields of what a
// program allocates. dsm must not import the analyzer, which pulls in
// plotting code, and the two must agree exactly, or a report would name
// bytes differently from the allocation that made them.
package layout

import (
	"errors"
	"fmt"
	"reflect"
	"strconv"
)

// MaxVars bounds the number of variables one call to Vars returns. Every
// variable costs the analyzer memory and a line in a report; an array of a
// million structs is better registered as one variable, whose pages the
// analyzer still follows, than as millions of names.
const MaxVars = 4096

// Errors returned by Vars; test for them with errors.Is.
var (
	// ErrNotStruct is returned for a value that is not a struct, an array
	// of structs, or a pointer to either.
	ErrNotStruct = errors.New("layout: not a struct or an array of structs")
	// ErrTooMany is returned when a type would expand to more than MaxVars
	// variables.
	ErrTooMany = errors.New("layout: too many variables")
)

// Var is a named byte range: a field, or an element's field, of the type
// passed to Vars.
type Var struct {
	Name   string
	Offset uint64 // byte offset in the region
	Size   uint64 // size in bytes
}

// Vars expands the type of v, placed at the given region offset, into one
// Var per field. v is a struct, an array of structs (or of arrays of
// structs), or a pointer to either; only its type is used, so a nil pointer
// of the right type is enough.
//
// Fields are named "name.Field". A field whose type is a struct with two or
// more fields that occupy bytes is expanded in turn ("name.Inner.Field"); a
// struct with a single such field, like sync/atomic.Uint64 or sync.Mutex,
// stays one variable named after the outer field. An array whose elements
// are such expandable structs (or arrays of them) is expanded per element,
// "name[1].Field" or "name[1][2].Field", at the top level as in a field;
// any other array (of numbers, of atomic.Uint64, ...) stays one variable.
// Blank (_) fields and fields of size zero are left out: they are padding,
// or occupy no byte. Offsets and sizes come from reflect.
//
// An empty name is replaced by the type's name; an array type has none, so
// it needs one. Vars returns an error wrapping ErrNotStruct for any other
// kind of value, and one wrapping ErrTooMany when the type expands to more
// than MaxVars variables.
func Vars(name string, offset uint64, v any) ([]Var, error) {
	if v == nil {
		return nil, fmt.Errorf("%w: Vars(%q) got nil; pass a value or a nil pointer of the type, e.g. (*Stats)(nil)", ErrNotStruct, name)
	}
	t := reflect.TypeOf(v)
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	top := t
	for top.Kind() == reflect.Array {
		top = top.Elem()
	}
	if top.Kind() != reflect.Struct {
		return nil, fmt.Errorf("%w: Vars(%q) got %s; pass a struct, an array of structs, or a pointer to one (an array of numbers is one variable: name it as a whole)",
			ErrNotStruct, name, reflect.TypeOf(v))
	}
	if name == "" {
		name = t.Name()
	}
	if name == "" {
		return nil, fmt.Errorf("layout: Vars: a value of type %s needs a name (its type has none)", t)
	}
	if n := countTop(t); n > MaxVars {
		return nil, fmt.Errorf("%w: %s (%s) would be %d variables, more than %d: register it as one variable (dsm: Region.Alloc with a name) or split it into smaller allocations",
			ErrTooMany, name, t, n, MaxVars)
	}
	var out []Var
	if t.Kind() == reflect.Struct {
		expandFields(&out, t, name, offset)
	} else {
		expand(&out, t, name, offset)
	}
	return out, nil
}

// expand appends the variables of a value of type t named name at offset.
func expand(out *[]Var, t reflect.Type, name string, offset uint64) {
	switch {
	case t.Kind() == reflect.Struct && len(fieldsWithBytes(t)) >= 2:
		expandFields(out, t, name, offset)
	case t.Kind() == reflect.Array && expandable(t):
		es := uint64(t.Elem().Size())
		for i := range t.Len() {
			expand(out, t.Elem(), name+"["+strconv.Itoa(i)+"]", offset+uint64(i)*es)
		}
	default:
		*out = append(*out, Var{Name: name, Offset: offset, Size: uint64(t.Size())})
	}
}

// expandFields appends the fields of struct type t, named prefix.Field.
func expandFields(out *[]Var, t reflect.Type, prefix string, offset uint64) {
	for _, f := range fieldsWithBytes(t) {
		expand(out, f.Type, prefix+"."+f.Name, offset+uint64(f.Offset))
	}
}

// expandable reports whether array type t is expanded per element: its
// elements, through any nested arrays, are structs with two or more fields
// that occupy bytes.
func expandable(t reflect.Type) bool {
	for t.Kind() == reflect.Array {
		if t.Len() == 0 {
			return false
		}
		t = t.Elem()
	}
	return t.Kind() == reflect.Struct && len(fieldsWithBytes(t)) >= 2
}

// countTop returns the number of variables Vars makes of type t at the top
// level, saturating rather than overflowing.
func countTop(t reflect.Type) uint64 {
	if t.Kind() != reflect.Struct {
		return count(t)
	}
	var n uint64
	for _, f := range fieldsWithBytes(t) {
		n = satAdd(n, count(f.Type))
	}
	return n
}

// count returns the number of variables expand makes of type t.
func count(t reflect.Type) uint64 {
	switch {
	case t.Kind() == reflect.Struct && len(fieldsWithBytes(t)) >= 2:
		return countTop(t)
	case t.Kind() == reflect.Array && expandable(t):
		return satMul(uint64(t.Len()), count(t.Elem()))
	}
	return 1
}

func satAdd(a, b uint64) uint64 {
	if a+b < a {
		return ^uint64(0)
	}
	return a + b
}

func satMul(a, b uint64) uint64 {
	if a != 0 && b > ^uint64(0)/a {
		return ^uint64(0)
	}
	return a * b
}

// fieldsWithBytes returns the fields of struct type t that are not blank and
// occupy at least one byte.
func fieldsWithBytes(t reflect.Type) []reflect.StructField {
	var fs []reflect.StructField
	for i := range t.NumField() {
		f := t.Field(i)
		if f.Name == "_" || f.Type.Size() == 0 {
			continue
		}
		fs = append(fs, f)
	}
	return fs
}

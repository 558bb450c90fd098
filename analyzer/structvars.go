package analyzer

import (
	"fmt"
	"reflect"
)

// StructVars expands a Go struct type placed at the given region offset into
// one Var per field, so that the analyzer can name the fields that falsely
// share a page and compute the padding to insert between them. v is a
// struct value or a pointer to one (a nil pointer of the right type is
// enough); only its type is used.
//
// Fields are named "name.Field". Nested struct fields are expanded
// recursively ("name.Inner.Field") when the nested struct has two or more
// fields that occupy bytes; a struct with a single such field, like
// sync/atomic.Uint64 or sync.Mutex, stays one variable named after the outer
// field. Blank (_) fields and fields of size zero are left out: they are
// padding, or occupy no byte. Offsets and sizes come from reflect.
//
// An empty name is replaced by the type's name. StructVars returns an error
// wrapping ErrNotStruct for anything but a struct or a pointer to one.
func StructVars(name string, offset uint64, v any) ([]Var, error) {
	if v == nil {
		return nil, fmt.Errorf("%w: StructVars(%q) got nil; pass a struct value or a pointer to one, e.g. (*Stats)(nil)", ErrNotStruct, name)
	}
	t := reflect.TypeOf(v)
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct {
		return nil, fmt.Errorf("%w: StructVars(%q) got %s; pass a struct value or a pointer to one", ErrNotStruct, name, reflect.TypeOf(v))
	}
	if name == "" {
		name = t.Name()
	}
	if name == "" {
		return nil, fmt.Errorf("analyzer: StructVars: an anonymous struct type needs a name")
	}
	var out []Var
	expandStruct(&out, t, name, offset)
	return out, nil
}

// expandStruct appends the fields of struct type t at offset to out.
func expandStruct(out *[]Var, t reflect.Type, prefix string, offset uint64) {
	for _, f := range fieldsWithBytes(t) {
		name := prefix + "." + f.Name
		off := offset + uint64(f.Offset)
		if f.Type.Kind() == reflect.Struct && len(fieldsWithBytes(f.Type)) >= 2 {
			expandStruct(out, f.Type, name, off)
			continue
		}
		*out = append(*out, Var{Name: name, Offset: off, Size: uint64(f.Type.Size())})
	}
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

package layout

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

type Stats struct {
	Hits   uint64
	Misses uint64
	Ratio  float64
}

type inner struct{ X, Y uint64 }

type outer struct {
	A     uint32
	In    inner
	N     atomic.Uint64
	Mu    sync.Mutex
	_     [40]byte
	Empty struct{}
	B     [3]uint16
}

type bank struct {
	Total  uint64
	Shards [2]Stats
	Counts [4]atomic.Uint64
	Grid   [2][2]inner
}

func TestVars(t *testing.T) {
	tests := []struct {
		name string
		arg  string
		off  uint64
		v    any
		want []Var
	}{
		{"struct value", "S", 100, Stats{}, []Var{{"S.Hits", 100, 8}, {"S.Misses", 108, 8}, {"S.Ratio", 116, 8}}},
		{"nil pointer, type name", "", 0, (*Stats)(nil), []Var{{"Stats.Hits", 0, 8}, {"Stats.Misses", 8, 8}, {"Stats.Ratio", 16, 8}}},
		{"nested, wrappers, blanks", "o", 4096, outer{}, []Var{
			{"o.A", 4096, 4}, {"o.In.X", 4104, 8}, {"o.In.Y", 4112, 8},
			{"o.N", 4120, 8}, {"o.Mu", 4128, 8}, {"o.B", 4176, 6},
		}},
		{"one field struct still named", "c", 0, struct{ A int64 }{}, []Var{{"c.A", 0, 8}}},
		{"array of structs", "Stats", 0, [2]Stats{}, []Var{
			{"Stats[0].Hits", 0, 8}, {"Stats[0].Misses", 8, 8}, {"Stats[0].Ratio", 16, 8},
			{"Stats[1].Hits", 24, 8}, {"Stats[1].Misses", 32, 8}, {"Stats[1].Ratio", 40, 8},
		}},
		{"pointer to nested arrays", "g", 8, (*[2][1]inner)(nil), []Var{
			{"g[0][0].X", 8, 8}, {"g[0][0].Y", 16, 8}, {"g[1][0].X", 24, 8}, {"g[1][0].Y", 32, 8},
		}},
		{"arrays in a struct", "b", 0, bank{}, []Var{
			{"b.Total", 0, 8},
			{"b.Shards[0].Hits", 8, 8}, {"b.Shards[0].Misses", 16, 8}, {"b.Shards[0].Ratio", 24, 8},
			{"b.Shards[1].Hits", 32, 8}, {"b.Shards[1].Misses", 40, 8}, {"b.Shards[1].Ratio", 48, 8},
			{"b.Counts", 56, 32},
			{"b.Grid[0][0].X", 88, 8}, {"b.Grid[0][0].Y", 96, 8}, {"b.Grid[0][1].X", 104, 8}, {"b.Grid[0][1].Y", 112, 8},
			{"b.Grid[1][0].X", 120, 8}, {"b.Grid[1][0].Y", 128, 8}, {"b.Grid[1][1].X", 136, 8}, {"b.Grid[1][1].Y", 144, 8},
		}},
		{"array of one-field structs is one variable", "n", 16, [4]atomic.Uint64{}, []Var{{"n", 16, 32}}},
		{"empty struct", "e", 0, struct{}{}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Vars(tt.arg, tt.off, tt.v)
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("got  %v\nwant %v", got, tt.want)
			}
		})
	}
}

func TestVarsErrors(t *testing.T) {
	type big struct{ A, B uint64 }
	tests := []struct {
		name    string
		arg     string
		v       any
		wantErr error  // nil: any error
		text    string // the message must contain it
	}{
		{"nil", "x", nil, ErrNotStruct, "nil pointer"},
		{"number", "x", 42, ErrNotStruct, "got int"},
		{"slice", "x", []Stats{}, ErrNotStruct, "got []layout.Stats"},
		{"array of numbers", "x", [8]uint64{}, ErrNotStruct, "name it as a whole"},
		{"pointer to pointer", "x", (**Stats)(nil), ErrNotStruct, "got **layout.Stats"},
		{"anonymous struct without a name", "", struct{ A int }{}, nil, "needs a name"},
		{"array without a name", "", [2]Stats{}, nil, "needs a name"},
		{"too many", "Big", (*[MaxVars/2 + 1]big)(nil), ErrTooMany, "Region.Alloc"},
		{"too many, huge", "Huge", (*[1 << 20][1 << 12]big)(nil), ErrTooMany, "more than 4096"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Vars(tt.arg, 0, tt.v)
			if err == nil {
				t.Fatalf("no error; got %v", got)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("err = %v, want %v", err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.text) {
				t.Errorf("err = %q, want it to mention %q", err, tt.text)
			}
		})
	}
	// Exactly MaxVars is allowed.
	if vs, err := Vars("Max", 0, (*[MaxVars / 2]big)(nil)); err != nil || len(vs) != MaxVars {
		t.Errorf("MaxVars variables: %d, %v", len(vs), err)
	}
}

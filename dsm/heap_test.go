package dsm_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/require"

	"github.com/dsmrt/dsm/dsm"
)

func init() {
	workers["names"] = workNames
	workers["tree"] = workTree
}

// namesAsked are allocated by every node, each in another order.
var namesAsked = []struct {
	name        string
	size, align int
}{
	{"alpha", 8, 8},
	{"beta", 100, 64},
	{"gamma", 4096, 4096},
	{"delta", 24, 8},
	{"epsilon", 3 << 20, 4096},
	{"zeta", 1, 1},
}

func workNames(r *dsm.Region) error {
	order := slices.Clone(namesAsked)
	switch r.NodeID() % 3 {
	case 1:
		slices.Reverse(order)
	case 2:
		order = append(order[3:], order[:3]...)
	}
	for _, a := range order {
		off, err := r.Alloc(a.name, a.size, a.align)
		if err != nil {
			return err
		}
		fmt.Printf("name %s at %d\n", a.name, off)
	}
	if _, err := r.Alloc("alpha", 16, 8); err == nil {
		return fmt.Errorf("alpha with another size was accepted")
	} else {
		fmt.Printf("mismatch: %v\n", err)
	}
	return nil
}

// Three nodes allocate the same names in three orders, at the same time:
// every node gets the same offset for a name, no two names overlap, and a
// node that asks for a name with another size hears both sizes.
func TestNamesAgreeWhateverTheOrder(t *testing.T) {
	c := startCluster(t, 3)
	out := runWorkers(t, c, "names")
	re := regexp.MustCompile(`\[(\d)\] name (\w+) at (\d+)`)
	at := map[string]map[string]bool{} // name -> offsets seen
	for _, m := range re.FindAllStringSubmatch(out, -1) {
		if at[m[2]] == nil {
			at[m[2]] = map[string]bool{}
		}
		at[m[2]][m[3]] = true
	}
	require.Len(t, at, len(namesAsked), out)
	type span struct{ lo, hi int }
	var spans []span
	for _, a := range namesAsked {
		require.Len(t, at[a.name], 1, "%s got different offsets on different nodes:\n%s", a.name, out)
		for o := range at[a.name] {
			off, _ := strconv.Atoi(o)
			require.Zero(t, off%a.align, "%s at %d is not aligned to %d", a.name, off, a.align)
			spans = append(spans, span{off, off + a.size})
		}
	}
	for i, a := range spans {
		for _, b := range spans[i+1:] {
			require.True(t, a.hi <= b.lo || b.hi <= a.lo, "%v overlaps %v:\n%s", a, b, out)
		}
	}
	require.Equal(t, 3, strings.Count(out, "asked for 16 bytes aligned to 8, but the cluster has it as 8 bytes aligned to 8"), out)
}

// treeNode is a node of a binary search tree in the shared heap. Its
// pointers point into the region, valid on every node.
type treeNode struct {
	Key         uint64
	Left, Right *treeNode
}

const treeKeys = 900

func workTree(r *dsm.Region) error {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	off, err := r.Alloc("tree_root", 8, 8)
	if err != nil {
		return err
	}
	root := (**treeNode)(r.Ptr(off))
	mu := r.Mutex("tree")
	id, nodes := r.NodeID(), r.Nodes()
	var mine []uint64
	for k := uint64(0); k < treeKeys; k++ {
		if int(k)%nodes == id {
			mine = append(mine, k)
		}
	}
	rng := rand.New(rand.NewPCG(uint64(id), 7))
	rng.Shuffle(len(mine), func(i, j int) { mine[i], mine[j] = mine[j], mine[i] })
	var allocs, frees int
	op := func(f func() error) error {
		if err := mu.Lock(ctx); err != nil {
			return err
		}
		defer mu.Unlock()
		return f()
	}
	var pending []uint64 // keys to delete a little later
	// Start together, so that the nodes' operations interleave.
	if err := r.Barrier(ctx, "tree_start", nodes); err != nil {
		return err
	}
	for i, k := range mine {
		err := op(func() error {
			n, err := dsm.New[treeNode](r)
			if err != nil {
				return err
			}
			allocs++
			n.Key = k
			p := root
			for *p != nil {
				if k < (*p).Key {
					p = &(*p).Left
				} else {
					p = &(*p).Right
				}
			}
			*p = n
			return nil
		})
		if err != nil {
			return fmt.Errorf("insert %d: %w", k, err)
		}
		if k%5 == 0 {
			pending = append(pending, k)
		}
		if i%4 == 3 || i == len(mine)-1 {
			for _, d := range pending {
				if err := op(func() error { return treeDelete(r, root, d, &frees) }); err != nil {
					return fmt.Errorf("delete %d: %w", d, err)
				}
			}
			pending = pending[:0]
		}
	}
	if err := r.Barrier(ctx, "tree_built", nodes); err != nil {
		return err
	}
	var keys []uint64
	var walk func(n *treeNode)
	walk = func(n *treeNode) {
		if n == nil {
			return
		}
		walk(n.Left)
		keys = append(keys, n.Key)
		walk(n.Right)
	}
	walk(*root)
	var want []uint64
	for k := uint64(0); k < treeKeys; k++ {
		if k%5 != 0 {
			want = append(want, k)
		}
	}
	if !slices.Equal(keys, want) {
		return fmt.Errorf("the tree holds %d keys %v, want %d keys", len(keys), keys, len(want))
	}
	var sum uint64
	for _, k := range keys {
		sum += k
	}
	fmt.Printf("tree ok: %d keys, sum %d; this node allocated %d and freed %d\n", len(keys), sum, allocs, frees)
	// Nobody frees the tree's nodes while another node still walks it.
	return r.Barrier(ctx, "tree_walked", nodes)
}

// treeDelete removes key k from the tree and frees the node it took out.
// A node with two children takes its successor's key and frees the
// successor, which another node may have allocated.
func treeDelete(r *dsm.Region, root **treeNode, k uint64, frees *int) error {
	p := root
	for *p != nil && (*p).Key != k {
		if k < (*p).Key {
			p = &(*p).Left
		} else {
			p = &(*p).Right
		}
	}
	n := *p
	if n == nil {
		return fmt.Errorf("key %d is not in the tree", k)
	}
	switch {
	case n.Left == nil:
		*p = n.Right
	case n.Right == nil:
		*p = n.Left
	default:
		s := &n.Right
		for (*s).Left != nil {
			s = &(*s).Left
		}
		succ := *s
		n.Key = succ.Key
		*s = succ.Right
		n = succ
	}
	*frees++
	return dsm.Free(r, n)
}

// Three nodes build one binary search tree of dsm.New nodes, inserting and
// deleting concurrently under a Mutex and freeing what they delete (often
// a node another node allocated); every node then walks the final tree and
// finds exactly the keys that were not deleted.
func TestSharedHeapTree(t *testing.T) {
	c := startCluster(t, 3)
	out := runWorkers(t, c, "tree")
	want := 0
	for k := 0; k < treeKeys; k++ {
		if k%5 != 0 {
			want += k
		}
	}
	require.Equal(t, 3, strings.Count(out, fmt.Sprintf("tree ok: %d keys, sum %d", treeKeys*4/5, want)), out)
}

// Misuse of the heap is an error that says what went wrong, in a real
// region.
func TestHeapMisuse(t *testing.T) {
	c := startCluster(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := dsm.Attach(ctx, dsm.Options{Socket: c.Daemons[0].Socket, OnLost: func(error) {}})
	require.NoError(t, err)
	defer r.Close()

	p, err := dsm.New[treeNode](r, dsm.Name("node"))
	require.NoError(t, err)
	require.Zero(t, *p)
	s, err := dsm.MakeSlice[uint64](r, 1000, dsm.Align(r.PageSize()))
	require.NoError(t, err)
	require.Len(t, s, 1000)
	require.Zero(t, uintptr(unsafe.Pointer(&s[0]))%uintptr(r.PageSize()))
	off, err := r.Alloc("named", 64, 8)
	require.NoError(t, err)
	var local uint64

	cases := []struct {
		name string
		p    any
		want string
	}{
		{"inside an object", &s[1], "not at its start"},
		{"a named allocation", (*uint64)(r.Ptr(off)), "named allocation"},
		{"Go memory", &local, "not in the region"},
		{"nil", (*treeNode)(nil), "nil"},
		{"not a pointer", 42, "give the pointer or slice"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			require.ErrorContains(t, dsm.Free(r, tc.p), tc.want)
		})
	}
	require.NoError(t, dsm.Free(r, p))
	require.ErrorContains(t, dsm.Free(r, p), "double free")
	require.NoError(t, dsm.Free(r, s))

	_, err = dsm.New[struct{ S string }](r)
	require.ErrorContains(t, err, ".S is a string")
	_, err = dsm.MakeSlice[uint64](r, 0)
	require.ErrorContains(t, err, "must be > 0")
	_, err = dsm.MakeSlice[byte](r, 64<<20)
	require.ErrorIs(t, err, dsm.ErrFull)
	require.ErrorContains(t, err, "-size")
	_, err = r.Alloc("huge", 64<<20, 8)
	require.ErrorIs(t, err, dsm.ErrFull)
	require.ErrorContains(t, err, "named allocations 65536")
}

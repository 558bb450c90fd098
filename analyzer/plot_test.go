package analyzer

import (
	"errors"
	"image"
	"image/color"
	"image/png"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func decodePNG(t *testing.T, path string) image.Image {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("%s is not a PNG: %v", path, err)
	}
	return img
}

func same(c color.Color, want color.RGBA) bool {
	r, g, b, a := c.RGBA()
	wr, wg, wb, wa := want.RGBA()
	return r == wr && g == wg && b == wb && a == wa
}

// maxAlternations returns the largest number of switches between colours x
// and y along one pixel row (pixels of other colours are skipped), and the
// number of pixels of each colour in the whole image.
func maxAlternations(img image.Image, x, y color.RGBA) (alt, nx, ny int) {
	b := img.Bounds()
	for py := b.Min.Y; py < b.Max.Y; py++ {
		last, n := -1, 0
		for px := b.Min.X; px < b.Max.X; px++ {
			c := img.At(px, py)
			cur := -1
			switch {
			case same(c, x):
				cur = 0
				nx++
			case same(c, y):
				cur = 1
				ny++
			}
			if cur < 0 {
				continue
			}
			if last >= 0 && cur != last {
				n++
			}
			last = cur
		}
		alt = max(alt, n)
	}
	return alt, nx, ny
}

func TestWriteHeatmap(t *testing.T) {
	ping := func(from uint16) []Range { return []Range{{Off: uint32(from) * 8, Len: 8}} }
	once := []Migration{{Page: 0, From: 0, To: 1, Write: true, Wall: time.Unix(1000, 0)},
		{Page: 0, From: 1, To: 0, Write: false, Wall: time.Unix(1001, 0)}}
	noWall := pingPong(0, 40, ping)
	for i := range noWall {
		noWall[i].Wall = time.Time{}
	}
	tests := []struct {
		name   string
		ms     []Migration
		w, h   int
		minAlt int // at least this many colour switches on some row
		maxAlt int // and at most this many
	}{
		{"ping-pong", pingPong(0, 60, ping), 900, 400, 40, 1 << 30},
		{"ping-pong, small image", pingPong(3, 200, ping), MinImageWidth, MinImageHeight, 20, 1 << 30},
		{"ping-pong without wall times", noWall, 640, 300, 30, 1 << 30},
		// One move and a read copy: node 0's stretch, then node 1's, and
		// the legend swatch on a row of its own adds at most one switch.
		{"a single move", once, 800, 300, 1, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := New(ps)
			for _, m := range tt.ms {
				a.Record(m)
			}
			path := filepath.Join(t.TempDir(), "heat.png")
			if err := a.WriteHeatmap(path, tt.w, tt.h); err != nil {
				t.Fatal(err)
			}
			img := decodePNG(t, path)
			if b := img.Bounds(); b.Dx() != tt.w || b.Dy() != tt.h {
				t.Errorf("size %v, want %d×%d", b, tt.w, tt.h)
			}
			alt, n0, n1 := maxAlternations(img, nodeColor(0), nodeColor(1))
			if n0 < 100 || n1 < 100 {
				t.Errorf("node colours cover %d and %d pixels; want both drawn", n0, n1)
			}
			if alt < tt.minAlt || alt > tt.maxAlt {
				t.Errorf("a row switches colour %d times, want %d..%d", alt, tt.minAlt, tt.maxAlt)
			}
		})
	}
}

func TestWriteHeatmapManyPagesAndNodes(t *testing.T) {
	a := New(ps)
	t0 := time.Unix(0, 1)
	// 300 pages, 12 nodes: more rows than fit, more nodes than the palette.
	for p := range uint32(300) {
		for i := range int(p%7) + 1 {
			a.Record(Migration{Page: p, From: uint16((int(p) + i) % 12), To: uint16((int(p) + i + 1) % 12), Write: i%3 != 2,
				Wall: t0.Add(time.Duration(int(p)*13+i) * time.Second)})
		}
	}
	path := filepath.Join(t.TempDir(), "many.png")
	if err := a.WriteHeatmap(path, 1000, 400); err != nil {
		t.Fatal(err)
	}
	img := decodePNG(t, path)
	if b := img.Bounds(); b.Dx() != 1000 || b.Dy() != 400 {
		t.Errorf("size %v", b)
	}
	seen := 0
	for i := range 12 {
		_, n, _ := maxAlternations(img, nodeColor(i), color.RGBA{1, 2, 3, 4})
		if n > 0 {
			seen++
		}
	}
	if seen != 12 {
		t.Errorf("%d of 12 node colours drawn", seen)
	}
	a.mu.Lock()
	hm, err := a.heatmapData((400 - 80) / 2)
	a.mu.Unlock()
	if err != nil || len(hm.pages) != 160 || hm.total != 300 {
		t.Errorf("rows = %d of %d, err %v", len(hm.pages), hm.total, err)
	}
	// The hottest pages (6 or 7 migrations, p%7 >= 5) are all among them.
	shown := make(map[uint32]bool)
	for _, p := range hm.pages {
		shown[p] = true
	}
	for p := range uint32(300) {
		if p%7 >= 5 && !shown[p] {
			t.Fatalf("hot page %d not shown", p)
		}
	}
}

func TestPlotErrors(t *testing.T) {
	dir := t.TempDir()
	empty := New(ps)
	if err := empty.WriteHeatmap(filepath.Join(dir, "x.png"), 800, 400); !errors.Is(err, ErrNoMigrations) {
		t.Errorf("heat map without migrations: %v", err)
	}
	if err := empty.WriteVarBars(filepath.Join(dir, "x.png")); !errors.Is(err, ErrNoVars) {
		t.Errorf("bars without vars: %v", err)
	}
	a := New(ps)
	a.AddVars(Var{"v", 0, 8})
	a.Record(Migration{Page: 0, From: 0, To: 1, Write: true})
	for _, sz := range [][2]int{{0, 400}, {800, 10}, {MinImageWidth - 1, 400}, {800, MaxImageSide + 1}} {
		err := a.WriteHeatmap(filepath.Join(dir, "x.png"), sz[0], sz[1])
		if !errors.Is(err, ErrBadSize) || !strings.Contains(err.Error(), "ask for") {
			t.Errorf("size %v: %v", sz, err)
		}
	}
	missing := filepath.Join(dir, "no", "such", "dir", "x.png")
	if err := a.WriteHeatmap(missing, 800, 400); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("heat map into a missing directory: %v", err)
	}
	if err := a.WriteVarBars(missing); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("bars into a missing directory: %v", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("left files behind: %v", ents)
	}
}

func TestWriteVarBars(t *testing.T) {
	a := New(ps)
	a.AddVars(Var{"counter_A", 0, 8}, Var{"counter_B", 8, 8}, Var{"solo", 4096, 8})
	for _, m := range simulate(ps, 0, incr(200, map[uint16]uint64{0: 0, 1: 8})) {
		a.Record(m)
	}
	// solo's page moves 199 times: about half of counter_A's 399.
	for _, m := range pingPong(1, 199, func(from uint16) []Range {
		if from == 0 {
			return []Range{{0, 8}}
		}
		return []Range{}
	}) {
		a.Record(m)
	}
	path := filepath.Join(t.TempDir(), "bars.png")
	if err := a.WriteVarBars(path); err != nil {
		t.Fatal(err)
	}
	img := decodePNG(t, path)
	b := img.Bounds()
	if b.Dx() <= 100 || b.Dy() <= 100 || b.Dx() > 4000 || b.Dy() > 1000 {
		t.Fatalf("size %v", b)
	}
	// Measure the bars of the first series: the tallest run of its colour
	// in each column, grouped into bars left to right.
	var bars []int
	inBar := false
	for x := b.Min.X; x < b.Max.X; x++ {
		run, best := 0, 0
		for y := b.Min.Y; y < b.Max.Y; y++ {
			if same(img.At(x, y), Palette[0]) {
				run++
				best = max(best, run)
			} else {
				run = 0
			}
		}
		switch {
		case best > 20 && !inBar:
			bars = append(bars, best)
			inBar = true
		case best > 20:
			bars[len(bars)-1] = max(bars[len(bars)-1], best)
		case best <= 20:
			inBar = false
		}
	}
	// The legend swatch is short; the three bars are tall.
	if len(bars) != 3 {
		t.Fatalf("found %d bars: %v", len(bars), bars)
	}
	if bars[0] != bars[1] {
		t.Errorf("counter_A and counter_B share a page but their bars differ: %v", bars)
	}
	if r := float64(bars[0]) / float64(bars[2]); r < 1.9 || r > 2.1 {
		t.Errorf("bar ratio %.2f, want about 399/199: %v", r, bars)
	}
}

package analyzer

import (
	"bytes"
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// Image size bounds, in pixels, for WriteHeatmap.
const (
	MinImageWidth  = 320
	MinImageHeight = 200
	MaxImageSide   = 8192
)

// maxBars bounds the number of variables in the bar chart.
const maxBars = 40

// Palette holds well-separated colours for the first nodes of a chart (the
// benchmarks' plots use it too, so a node has one colour everywhere);
// further nodes get colours spread around the hue circle.
var Palette = []color.RGBA{
	{0x1f, 0x5f, 0xbf, 0xff}, // blue
	{0xe0, 0x6c, 0x10, 0xff}, // orange
	{0x2a, 0x9d, 0x3a, 0xff}, // green
	{0xc8, 0x24, 0x2c, 0xff}, // red
	{0x80, 0x4c, 0xb4, 0xff}, // purple
	{0x8a, 0x56, 0x3c, 0xff}, // brown
	{0xd9, 0x5f, 0xb8, 0xff}, // pink
	{0x6e, 0x6e, 0x6e, 0xff}, // grey
	{0xa8, 0xa8, 0x1c, 0xff}, // olive
	{0x14, 0xae, 0xc4, 0xff}, // cyan
}

// nodeColor returns the colour of the i-th node of a chart.
func nodeColor(i int) color.RGBA {
	if i < len(Palette) {
		return Palette[i]
	}
	// Golden-angle hue steps keep neighbours apart.
	h := math.Mod(float64(i)*137.508, 360)
	return hsv(h, 0.65, 0.8)
}

func hsv(h, s, v float64) color.RGBA {
	c := v * s
	x := c * (1 - math.Abs(math.Mod(h/60, 2)-1))
	m := v - c
	var r, g, b float64
	switch {
	case h < 60:
		r, g, b = c, x, 0
	case h < 120:
		r, g, b = x, c, 0
	case h < 180:
		r, g, b = 0, c, x
	case h < 240:
		r, g, b = 0, x, c
	case h < 300:
		r, g, b = x, 0, c
	default:
		r, g, b = c, 0, x
	}
	u8 := func(f float64) uint8 { return uint8(math.Round((f + m) * 255)) }
	return color.RGBA{u8(r), u8(g), u8(b), 0xff}
}

// ownRun is a stretch of time during which one node owned a page.
type ownRun struct {
	start float64 // x coordinate where the run begins
	owner int     // index into heatmap.nodes
}

// heatmap is the data of the ownership chart, copied out under the lock.
type heatmap struct {
	pages      []uint32   // one row per page, bottom to top
	runs       [][]ownRun // per row, in x order
	nodes      []uint16   // colour i belongs to nodes[i]
	xmin, xmax float64
	xlabel     string
	total      int  // pages analysed in detail, shown or not
	partial    bool // some shown page has lost its oldest transfers
}

// heatmapData builds the ownership history of at most maxRows pages, the
// most migrated of those analysed in detail. The caller holds a.mu.
func (a *Analyzer) heatmapData(maxRows int) (*heatmap, error) {
	if len(a.pages) == 0 {
		return nil, fmt.Errorf("%w: record migrations before drawing the heat map", ErrNoMigrations)
	}
	ids := make([]uint32, 0, len(a.pages))
	for p := range a.pages {
		ids = append(ids, p)
	}
	sort.Slice(ids, func(i, j int) bool {
		x, y := a.pages[ids[i]], a.pages[ids[j]]
		if x.cnt.migrations != y.cnt.migrations {
			return x.cnt.migrations > y.cnt.migrations
		}
		return ids[i] < ids[j]
	})
	hm := &heatmap{total: len(ids)}
	ids = ids[:min(len(ids), maxRows)]
	slices.Sort(ids)
	hm.pages = ids

	// Wall time is the x axis when every shown event has one and they span
	// some time; otherwise the recording order is.
	useWall := true
	var minSeq, maxSeq uint64 = math.MaxUint64, 0
	var minWall, maxWall int64 = math.MaxInt64, math.MinInt64
	for _, p := range ids {
		for _, e := range a.pages[p].events {
			useWall = useWall && e.wall != 0
			minSeq, maxSeq = min(minSeq, e.seq), max(maxSeq, e.seq)
			minWall, maxWall = min(minWall, e.wall), max(maxWall, e.wall)
		}
	}
	useWall = useWall && maxWall > minWall
	scale := 1.0
	if useWall {
		span := time.Duration(maxWall - minWall)
		unit, name := time.Second, "s"
		switch {
		case span < 10*time.Millisecond:
			unit, name = time.Microsecond, "µs"
		case span < 10*time.Second:
			unit, name = time.Millisecond, "ms"
		}
		scale = float64(unit)
		hm.xmin, hm.xmax = 0, float64(maxWall-minWall)/scale
		hm.xlabel = "time since the first migration shown (" + name + ")"
	} else {
		hm.xmin, hm.xmax = float64(minSeq), float64(maxSeq+1)
		hm.xlabel = "migration number (in recording order)"
	}
	xOf := func(e event) float64 {
		if useWall {
			return float64(e.wall-minWall) / scale
		}
		return float64(e.seq)
	}

	index := make(map[uint16]int)
	nodeIdx := func(n uint16) int {
		if i, ok := index[n]; ok {
			return i
		}
		return -1
	}
	for _, p := range ids {
		for _, n := range a.pages[p].nodes {
			hm.nodes = addNode(hm.nodes, n)
		}
	}
	for i, n := range hm.nodes {
		index[n] = i
	}
	for _, p := range ids {
		st := a.pages[p]
		evs := st.ordered()
		// Before its first recorded transfer the page belonged to the node
		// that gave it away. When older transfers were forgotten, who owned
		// it before the oldest one kept is unknown: the row stays blank.
		runs := []ownRun{{start: hm.xmin, owner: nodeIdx(evs[0].from)}}
		if st.wrapped || st.before > 0 {
			runs[0].owner = -1
			hm.partial = true
		}
		x := hm.xmin
		for _, e := range evs {
			if !e.write {
				continue // a read copy leaves the owner in place
			}
			x = max(x, xOf(e)) // keep the causal order even if wall clocks disagree
			last := &runs[len(runs)-1]
			switch {
			case last.owner == nodeIdx(e.to):
			case last.start == x:
				last.owner = nodeIdx(e.to)
			default:
				runs = append(runs, ownRun{start: x, owner: nodeIdx(e.to)})
			}
		}
		hm.runs = append(hm.runs, runs)
	}
	return hm, nil
}

// ownerGrid is a plot.Plotter that draws one row per page, each pixel
// column coloured by the node that owned the page for most of that column.
type ownerGrid struct{ hm *heatmap }

// DataRange implements plot.DataRanger.
func (g ownerGrid) DataRange() (xmin, xmax, ymin, ymax float64) {
	return g.hm.xmin, g.hm.xmax, 0, float64(len(g.hm.pages))
}

// Plot implements plot.Plotter.
func (g ownerGrid) Plot(c draw.Canvas, plt *plot.Plot) {
	trX, trY := plt.Transforms(&c)
	// At 72 dpi a point is a pixel; whole-pixel edges keep every column a
	// single solid colour instead of a blend of its neighbours.
	round := func(l vg.Length) vg.Length { return vg.Length(math.Round(float64(l))) }
	x0, x1 := round(trX(g.hm.xmin)), round(trX(g.hm.xmax))
	ncol := int(x1 - x0)
	if ncol <= 0 {
		return
	}
	xmin := g.hm.xmin
	dx := (g.hm.xmax - xmin) / float64(ncol)
	nn := len(g.hm.nodes)
	cov := make([]float64, ncol*nn)
	for r, runs := range g.hm.runs {
		clear(cov)
		for i, run := range runs {
			end := g.hm.xmax
			if i+1 < len(runs) {
				end = runs[i+1].start
			}
			addCoverage(cov, nn, ncol, xmin, dx, run.start, end, run.owner)
		}
		y0, y1 := round(trY(float64(r))), round(trY(float64(r+1)))
		if y1-y0 >= 6 { // leave a thin gap between rows that are tall enough
			y0, y1 = y0+1, y1-1
		}
		// Merge columns of the same owner into one rectangle.
		start, cur := 0, winner(cov[:nn])
		for k := 1; k <= ncol; k++ {
			w := -1
			if k < ncol {
				w = winner(cov[k*nn : (k+1)*nn])
			}
			if k < ncol && w == cur {
				continue
			}
			if cur >= 0 {
				l, rgt := x0+vg.Length(start), x0+vg.Length(k)
				c.FillPolygon(nodeColor(cur), []vg.Point{{X: l, Y: y0}, {X: rgt, Y: y0}, {X: rgt, Y: y1}, {X: l, Y: y1}})
			}
			start, cur = k, w
		}
	}
}

// addCoverage adds the time [s, e) owned by owner to the columns it covers.
func addCoverage(cov []float64, nn, ncol int, xmin, dx, s, e float64, owner int) {
	if owner < 0 || e <= s {
		return
	}
	col := func(x float64) int {
		return min(max(int(math.Floor((x-xmin)/dx)), 0), ncol-1)
	}
	k0, k1 := col(s), col(e)
	if k0 == k1 {
		cov[k0*nn+owner] += e - s
		return
	}
	cov[k0*nn+owner] += xmin + float64(k0+1)*dx - s
	for k := k0 + 1; k < k1; k++ {
		cov[k*nn+owner] += dx
	}
	cov[k1*nn+owner] += e - (xmin + float64(k1)*dx)
}

// winner returns the index of the largest positive entry, or -1.
func winner(v []float64) int {
	best, w := 0.0, -1
	for i, x := range v {
		if x > best {
			best, w = x, i
		}
	}
	return w
}

// swatch is a legend thumbnail: a filled rectangle.
type swatch struct{ c color.Color }

// Thumbnail implements plot.Thumbnailer.
func (s swatch) Thumbnail(c *draw.Canvas) {
	r := c.Rectangle
	c.FillPolygon(s.c, []vg.Point{r.Min, {X: r.Max.X, Y: r.Min.Y}, r.Max, {X: r.Min.X, Y: r.Max.Y}})
}

// WriteHeatmap writes a PNG of width×height pixels to path: one row per page
// analysed in detail (the most migrated pages if not all fit), time along x,
// each cell coloured by the node that owned the page then, with a legend of
// the node colours.
// Ownership follows the write migrations; a page ping-ponging between nodes
// shows as alternating colours along its row. Before a page's first recorded
// transfer its row has the colour of the node that gave it away; a page that
// lost its oldest transfers to the analyzer's Limits (or that got detail late)
// has a blank row before the oldest transfer kept.
//
// The x axis is wall time when every record has one, else the order in which
// migrations were recorded. Sizes outside [MinImageWidth, MaxImageSide] ×
// [MinImageHeight, MaxImageSide] are refused with ErrBadSize; an analyzer
// without migrations returns ErrNoMigrations.
func (a *Analyzer) WriteHeatmap(path string, width, height int) error {
	return a.drawHeatmap(width, height, func(cnv *vgimg.Canvas) error { return writePNG(path, cnv) })
}

// drawHeatmap draws the heat map and hands the canvas to out.
func (a *Analyzer) drawHeatmap(width, height int, out func(*vgimg.Canvas) error) error {
	if width < MinImageWidth || height < MinImageHeight || width > MaxImageSide || height > MaxImageSide {
		return fmt.Errorf("%w: %d×%d pixels; ask for %d to %d pixels wide and %d to %d high",
			ErrBadSize, width, height, MinImageWidth, MaxImageSide, MinImageHeight, MaxImageSide)
	}
	// Rows get at least two pixels; about 80 pixels go to title and axes.
	maxRows := max(1, (height-80)/2)
	a.mu.Lock()
	hm, err := a.heatmapData(maxRows)
	a.mu.Unlock()
	if err != nil {
		return err
	}

	title := "Page ownership over time"
	if len(hm.pages) < hm.total {
		title += fmt.Sprintf(" (the %d most migrated of %d pages)", len(hm.pages), hm.total)
	}
	if hm.partial {
		title += fmt.Sprintf("; blank before the oldest transfer kept (at most %d a page)", a.lim.EventsPerPage)
	}
	cnv := drawOwnership(hm, title, width, height)
	return out(cnv)
}

// drawOwnership draws the ownership chart of hm with a legend of the node
// colours on a width×height canvas.
func drawOwnership(hm *heatmap, title string, width, height int) *vgimg.Canvas {
	// At 72 dpi a point is a pixel, so the canvas is exactly width×height.
	cnv := vgimg.NewWith(vgimg.UseWH(vg.Length(width), vg.Length(height)), vgimg.UseDPI(72))
	dc := draw.New(cnv)
	legend := plot.NewLegend()
	legend.Top, legend.Left = true, true
	legend.ThumbnailWidth = 14
	legend.TextStyle.Font.Size = 11
	legend.Add("owner")
	for i, n := range hm.nodes {
		legend.Add("node "+strconv.Itoa(int(n)), swatch{nodeColor(i)})
	}
	legendW := legend.Rectangle(dc).Size().X + 16

	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = hm.xlabel
	p.Y.Label.Text = "page"
	p.X.Padding, p.Y.Padding = 0, 0
	p.Add(ownerGrid{hm})
	p.X.Min, p.X.Max = hm.xmin, hm.xmax
	p.Y.Min, p.Y.Max = 0, float64(len(hm.pages))
	p.Y.Tick.Marker = pageTicks(hm.pages, float64(height-80))
	p.Draw(draw.Crop(dc, 0, -legendW, 0, 0))
	legend.Draw(draw.Crop(dc, vg.Length(width)-legendW+8, 0, 0, -30))
	return cnv
}

// drawVars draws the bar chart of Analyzer.WriteVarBars from the
// per-variable statistics of a report.
func drawVars(all []VarStat) (*vgimg.Canvas, error) {
	if len(all) == 0 {
		return nil, fmt.Errorf("%w: the report names no variable", ErrNoVars)
	}
	vars := all[:min(len(all), maxBars)]
	names := make([]string, len(vars))
	migr := make(plotter.Values, len(vars))
	writes := make(plotter.Values, len(vars))
	longest, top := 0, 1.0
	for i, v := range vars {
		names[i] = v.Name
		if v.Class == FalseSharing {
			names[i] += " *"
		}
		longest = max(longest, len([]rune(names[i])))
		migr[i], writes[i] = float64(v.Migrations), float64(v.Writes)
		top = max(top, migr[i], writes[i])
	}
	longest = min(longest, 48)
	width := min(max(160+48*len(vars), 560), 4000)
	height := 420 + longest*5

	p := plot.New()
	p.Title.Text = "Migrations per variable"
	if len(vars) < len(all) {
		p.Title.Text += fmt.Sprintf(" (the %d most migrated of %d)", len(vars), len(all))
	}
	p.Y.Label.Text = "migrations"
	slot := float64(width-120) / float64(len(vars))
	bw := vg.Length(max(2, min(slot*0.35, 40)))
	b1, err := plotter.NewBarChart(migr, bw)
	if err != nil {
		return nil, fmt.Errorf("analyzer: bar chart: %w", err)
	}
	b2, err := plotter.NewBarChart(writes, bw)
	if err != nil {
		return nil, fmt.Errorf("analyzer: bar chart: %w", err)
	}
	b1.Color, b1.LineStyle.Width, b1.Offset = Palette[0], 0, -bw/2
	b2.Color, b2.LineStyle.Width, b2.Offset = Palette[1], 0, bw/2
	p.Add(b1, b2)
	// The headroom above the bars holds the legend.
	p.Y.Min, p.Y.Max = 0, top*1.3
	p.Legend.Top = true
	p.Legend.Add("migrations of the variable's pages", b1)
	p.Legend.Add("transfers that carried its writes", b2)
	p.Legend.Add("* = written on a falsely shared page")
	p.NominalX(names...)
	p.X.Min, p.X.Max = -0.5, float64(len(vars))-0.5
	p.Y.Tick.Marker = intTicks{}
	p.X.Tick.Label.Rotation = math.Pi / 4
	p.X.Tick.Label.XAlign = draw.XRight
	p.X.Tick.Label.YAlign = draw.YCenter

	cnv := vgimg.NewWith(vgimg.UseWH(vg.Length(width), vg.Length(height)), vgimg.UseDPI(72))
	p.Draw(draw.New(cnv))
	return cnv, nil
}

// pageTicks labels the rows with page numbers, skipping labels when rows are
// too thin for text.
func pageTicks(pages []uint32, plotHeight float64) plot.ConstantTicks {
	step := 1
	if rowH := plotHeight / float64(len(pages)); rowH < 14 {
		step = int(math.Ceil(14 / rowH))
	}
	var ts plot.ConstantTicks
	for i, p := range pages {
		t := plot.Tick{Value: float64(i) + 0.5}
		if i%step == 0 {
			t.Label = strconv.FormatUint(uint64(p), 10)
		}
		ts = append(ts, t)
	}
	return ts
}

// WriteVarBars writes a PNG bar chart to path with two bars per named
// variable (at most 40, the most migrated): the migrations of the pages it
// lives on, and the transfers whose written ranges touched it. Variables
// written on a falsely shared page are marked with "*". An analyzer without
// variables returns ErrNoVars.
func (a *Analyzer) WriteVarBars(path string) error {
	return a.drawVarBars(func(cnv *vgimg.Canvas) error { return writePNG(path, cnv) })
}

// drawVarBars draws the bar chart and hands the canvas to out.
func (a *Analyzer) drawVarBars(out func(*vgimg.Canvas) error) error {
	r := a.Report()
	if len(r.Vars) == 0 {
		return fmt.Errorf("%w: add variables with AddVars before drawing the bar chart", ErrNoVars)
	}
	cnv, err := drawVars(r.Vars)
	if err != nil {
		return err
	}
	return out(cnv)
}

// intTicks are the default ticks of an axis of counts, labelled without
// decimals and with thousands separators.
type intTicks struct{}

// Ticks implements plot.Ticker.
func (intTicks) Ticks(lo, hi float64) []plot.Tick {
	ts := plot.DefaultTicks{}.Ticks(lo, hi)
	for i := range ts {
		if ts[i].Label != "" {
			ts[i].Label = commas(int(math.Round(ts[i].Value)))
		}
	}
	return ts
}

// pngBytes encodes the canvas as PNG.
func pngBytes(cnv *vgimg.Canvas) ([]byte, error) {
	var b bytes.Buffer
	if _, err := (vgimg.PngCanvas{Canvas: cnv}).WriteTo(&b); err != nil {
		return nil, fmt.Errorf("analyzer: encoding a PNG: %w", err)
	}
	return b.Bytes(), nil
}

// writePNG encodes the canvas to a temporary file beside path and renames it
// into place, so that a reader never sees half an image.
func writePNG(path string, cnv *vgimg.Canvas) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return fmt.Errorf("analyzer: writing %s: %w", path, err)
	}
	tmp := f.Name()
	if _, err := (vgimg.PngCanvas{Canvas: cnv}).WriteTo(f); err != nil {
		f.Close()
		os.Remove(tmp)
		return fmt.Errorf("analyzer: writing %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("analyzer: writing %s: %w", path, err)
	}
	if err := os.Chmod(tmp, 0o644); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("analyzer: writing %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("analyzer: writing %s: %w", path, err)
	}
	return nil
}

package main

import (
	"errors"
	"fmt"
	"image/color"
	"math"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"

	"github.com/dsmrt/dsm/analyzer"
)

// plotData is what the plots need beyond the figures: the samples of every
// latency figure, and which points each part produced.
type plotData struct {
	samples map[string][]int64
	scan    []scanPoint
	size    []int
	loss    []labelled
}

type scanPoint struct {
	depth int
	mbps  float64
}

// Plot size.
const (
	plotW = 8 * vg.Inch
	plotH = 5 * vg.Inch
)

func colour(i int) color.RGBA { return analyzer.Palette[i%len(analyzer.Palette)] }

// labelled is a latency series: a figure key and its label on a plot.
type labelled struct{ key, label string }

// faultSeries are the fault kinds shown beside the limits, in order.
func (s *suite) faultSeries() []labelled {
	out := []labelled{
		{keyLimitChain, "limit: remote fault chain"},
		{"limit/uffd_local_fault", "limit: local uffd fault"},
		{"limit/udp_rtt", "limit: UDP RTT 4 KiB"},
		{"limit/kcp_rtt", "KCP RTT 4 KiB"},
		{"read_fault", "remote read fault"},
		{"write_fault_owner", "write fault, take ownership"},
	}
	n := s.cfg.InvalidateNodes
	for _, k := range []int{1, n - 1} {
		key := fmt.Sprintf("write_fault_invalidate/nodes=%d/k=%d", n, k)
		if !slices.ContainsFunc(out, func(l labelled) bool { return l.key == key }) {
			out = append(out, labelled{key, fmt.Sprintf("write fault, invalidate %d", k)})
		}
	}
	out = append(out, labelled{"pingpong/turns/handover", "ping-pong handover"})
	var have []labelled
	for _, l := range out {
		if len(s.plots.samples[l.key]) > 0 {
			have = append(have, l)
		}
	}
	return have
}

// writePlots writes the PNG plots into the output directory and returns
// their file names.
func (s *suite) writePlots() ([]string, error) {
	var names []string
	var errs []error
	for _, p := range []struct {
		name string
		make func() (*plot.Plot, error)
	}{
		{"latency_cdf.png", s.plotCDF},
		{"latency_box.png", s.plotBox},
		{"size.png", s.plotSize},
		{"invalidate.png", s.plotInvalidate},
		{"scan.png", s.plotScan},
		{"content.png", s.plotContent},
		{"loss.png", s.plotLoss},
	} {
		pl, err := p.make()
		if err != nil {
			errs = append(errs, fmt.Errorf("plot %s: %w", p.name, err))
			continue
		}
		if pl == nil {
			continue // nothing measured for it
		}
		if err := pl.Save(plotW, plotH, filepath.Join(s.cfg.Out, p.name)); err != nil {
			errs = append(errs, fmt.Errorf("save %s: %w", p.name, err))
			continue
		}
		names = append(names, p.name)
	}
	return names, errors.Join(errs...)
}

// cdfLine is the empirical CDF of samples (ns) in µs, thinned to at most
// 400 points.
func cdfLine(samples []int64) plotter.XYs {
	s := slices.Clone(samples)
	slices.Sort(s)
	n := len(s)
	step := max(1, n/400)
	var xy plotter.XYs
	for i := 0; i < n; i += step {
		xy = append(xy, plotter.XY{X: math.Max(float64(s[i])/1e3, 0.01), Y: float64(i+1) / float64(n)})
	}
	xy = append(xy, plotter.XY{X: math.Max(float64(s[n-1])/1e3, 0.01), Y: 1})
	return xy
}

func newPlot(title, x, y string) *plot.Plot {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = x
	p.Y.Label.Text = y
	p.Add(plotter.NewGrid())
	p.Legend.Top = true
	return p
}

// headroom raises the top of the Y axis so that the legend (top right)
// does not cover the data. Call it after adding the data.
func headroom(p *plot.Plot, log bool) {
	if log {
		p.Y.Min /= 2
		p.Y.Max *= 5
		return
	}
	p.Y.Max = p.Y.Min + (p.Y.Max-p.Y.Min)*1.35
}

func logX(p *plot.Plot) {
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.LogTicks{Prec: -1}
}

func logY(p *plot.Plot) {
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
}

func (s *suite) cdfPlot(title string, series []labelled) (*plot.Plot, error) {
	if len(series) == 0 {
		return nil, nil
	}
	p := newPlot(title, "latency (µs, log scale)", "fraction of operations at or below")
	logX(p)
	p.Legend.Left = false
	p.Legend.Top = false
	p.Legend.XOffs = -4
	p.Legend.YOffs = 4
	for i, l := range series {
		line, err := plotter.NewLine(cdfLine(s.plots.samples[l.key]))
		if err != nil {
			return nil, err
		}
		line.Color = colour(i)
		line.Width = vg.Points(1.5)
		if strings.HasPrefix(l.key, "limit/") {
			line.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
		}
		p.Add(line)
		p.Legend.Add(l.label, line)
	}
	if lim := s.res.Limits.LimitNs / 1e3; lim > 0 {
		for i, v := range []struct {
			x     float64
			label string
		}{
			{lim, "limit: fault chain median"},
			{aimRatio * lim, fmt.Sprintf("aim: %.1f× the limit", aimRatio)},
		} {
			l, err := plotter.NewLine(plotter.XYs{{X: v.x, Y: 0}, {X: v.x, Y: 1}})
			if err != nil {
				return nil, err
			}
			l.Color = color.RGBA{0x44, 0x44, 0x44, 0xff}
			l.Dashes = []vg.Length{vg.Points(1 + 4*float64(i)), vg.Points(3)}
			p.Add(l)
			p.Legend.Add(v.label, l)
		}
	}
	p.Y.Min, p.Y.Max = 0, 1
	return p, nil
}

func (s *suite) plotCDF() (*plot.Plot, error) {
	return s.cdfPlot("Fault latency beside the machine's limits (CDF)", s.faultSeries())
}

func (s *suite) plotBox() (*plot.Plot, error) {
	series := s.faultSeries()
	if len(series) == 0 {
		return nil, nil
	}
	p := newPlot("Fault latency beside the machine's limits", "", "latency (µs, log scale)")
	logY(p)
	var names []string
	for i, l := range series {
		vals := make(plotter.Values, len(s.plots.samples[l.key]))
		for j, v := range s.plots.samples[l.key] {
			vals[j] = math.Max(float64(v)/1e3, 0.01)
		}
		b, err := plotter.NewBoxPlot(vg.Points(28), float64(i), vals)
		if err != nil {
			return nil, err
		}
		b.FillColor = colour(i)
		b.GlyphStyle.Radius = vg.Points(1)
		p.Add(b)
		names = append(names, l.label)
	}
	p.NominalX(names...)
	p.X.Tick.Label.Rotation = 0.35
	p.X.Tick.Label.XAlign = draw.XRight
	p.X.Tick.Label.YAlign = draw.YCenter
	return p, nil
}

// statLine draws y(x) for the figures with keys key(x).
func (s *suite) statLine(xs []int, key func(int) string, pick func(Stat) float64) plotter.XYs {
	var xy plotter.XYs
	for _, x := range xs {
		if f, ok := s.res.figure(key(x)); ok && f.Latency.Count > 0 {
			xy = append(xy, plotter.XY{X: float64(x), Y: pick(f.Latency) / 1e3})
		}
	}
	return xy
}

// addLimitLine draws the limit (the fault chain) as a horizontal line over
// [x0, x1], in µs.
func (s *suite) addLimitLine(p *plot.Plot, x0, x1, y float64, label string) error {
	if y <= 0 {
		return nil
	}
	l, err := plotter.NewLine(plotter.XYs{{X: x0, Y: y}, {X: x1, Y: y}})
	if err != nil {
		return err
	}
	l.Color = color.RGBA{0x44, 0x44, 0x44, 0xff}
	l.Dashes = []vg.Length{vg.Points(5), vg.Points(4)}
	p.Add(l)
	p.Legend.Add(label, l)
	return nil
}

func (s *suite) linesByX(p *plot.Plot, xs []int, series []struct {
	label string
	key   func(int) string
	pick  func(Stat) float64
}) error {
	for i, sr := range series {
		xy := s.statLine(xs, sr.key, sr.pick)
		if len(xy) == 0 {
			continue
		}
		l, pts, err := plotter.NewLinePoints(xy)
		if err != nil {
			return err
		}
		l.Color, pts.Color = colour(i/2), colour(i/2)
		if i%2 == 1 {
			l.Dashes = []vg.Length{vg.Points(2), vg.Points(2)}
		}
		p.Add(l, pts)
		p.Legend.Add(sr.label, l, pts)
	}
	return nil
}

var (
	pickMedian = func(st Stat) float64 { return st.Median }
	pickP99    = func(st Stat) float64 { return st.P99 }
)

func (s *suite) plotSize() (*plot.Plot, error) {
	xs := s.plots.size
	if len(xs) == 0 {
		return nil, nil
	}
	p := newPlot("Fault latency against cluster size", "nodes", "latency (µs, log scale)")
	logY(p)
	read := func(n int) string { return fmt.Sprintf("size/nodes=%d/read_fault", n) }
	own := func(n int) string { return fmt.Sprintf("size/nodes=%d/write_fault_owner", n) }
	err := s.linesByX(p, xs, []struct {
		label string
		key   func(int) string
		pick  func(Stat) float64
	}{
		{"read fault, median", read, pickMedian},
		{"read fault, p99", read, pickP99},
		{"ownership write fault, median", own, pickMedian},
		{"ownership write fault, p99", own, pickP99},
	})
	if err != nil {
		return nil, err
	}
	p.X.Tick.Marker = intTicks(xs)
	p.X.Min, p.X.Max = float64(xs[0])-0.5, float64(xs[len(xs)-1])+0.5
	err = s.addLimitLine(p, p.X.Min, p.X.Max, s.res.Limits.LimitNs/1e3, "limit: fault chain median")
	headroom(p, true)
	return p, err
}

func (s *suite) plotInvalidate() (*plot.Plot, error) {
	n := s.cfg.InvalidateNodes
	key := func(k int) string { return fmt.Sprintf("write_fault_invalidate/nodes=%d/k=%d", n, k) }
	var ks []int
	for k := 1; k < n; k++ {
		if _, ok := s.res.figure(key(k)); ok {
			ks = append(ks, k)
		}
	}
	if len(ks) == 0 {
		return nil, nil
	}
	p := newPlot(fmt.Sprintf("Write fault invalidating k readers (%d nodes)", n), "k (readers invalidated)", "latency (µs, log scale)")
	logY(p)
	err := s.linesByX(p, ks, []struct {
		label string
		key   func(int) string
		pick  func(Stat) float64
	}{
		{"median", key, pickMedian},
		{"p99", key, pickP99},
	})
	if err != nil {
		return nil, err
	}
	p.X.Tick.Marker = intTicks(ks)
	p.X.Min, p.X.Max = float64(ks[0])-0.5, float64(ks[len(ks)-1])+0.5
	err = s.addLimitLine(p, p.X.Min, p.X.Max, s.res.Limits.LimitNs/1e3, "limit: fault chain median")
	headroom(p, true)
	return p, err
}

// intTicks labels exactly the given integers.
type intTicks []int

func (t intTicks) Ticks(min, max float64) []plot.Tick {
	var out []plot.Tick
	for _, v := range t {
		if float64(v) >= min && float64(v) <= max {
			out = append(out, plot.Tick{Value: float64(v), Label: strconv.Itoa(v)})
		}
	}
	return out
}

func (s *suite) plotScan() (*plot.Plot, error) {
	pts := s.plots.scan
	if len(pts) == 0 {
		return nil, nil
	}
	p := newPlot("Sequential scan throughput against read-ahead depth", "read-ahead depth (pages in flight per sequential fault)", "MB/s")
	var xy plotter.XYs
	maxDepth := 1
	for _, sp := range pts {
		xy = append(xy, plotter.XY{X: float64(sp.depth), Y: sp.mbps})
		maxDepth = max(maxDepth, sp.depth)
	}
	l, sc, err := plotter.NewLinePoints(xy)
	if err != nil {
		return nil, err
	}
	l.Color, sc.Color = colour(0), colour(0)
	sc.Radius = vg.Points(4)
	p.Add(l, sc)
	p.Legend.Add("measured", l, sc)
	depths := []int{1, 2, 4, 8, 16}
	p.X.Tick.Marker = intTicks(depths)
	p.X.Min, p.X.Max = 0, float64(max(16, maxDepth))+0.5
	p.Y.Min = 0
	limit := 0.0
	if s.res.Limits.LimitNs > 0 {
		limit = float64(s.ps) / s.res.Limits.LimitNs * 1e3 // bytes/ns → MB/s
	}
	if err := s.addLimitLine(p, p.X.Min, p.X.Max, limit, "limit: one page per fault chain"); err != nil {
		return nil, err
	}
	p.Y.Max = math.Max(limit, slices.MaxFunc(pts, func(a, b scanPoint) int { return cmpFloat(a.mbps, b.mbps) }).mbps) * 1.3
	return p, nil
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func (s *suite) plotContent() (*plot.Plot, error) {
	kinds := []string{contentZero, contentText, contentRandom}
	modes := []struct{ key, label string }{{"compress", "compressed (s2)"}, {"nocompress", "uncompressed"}}
	p := newPlot("Remote read fault by page content (median, 2 nodes)", "page content", "median latency (µs)")
	have := false
	w := vg.Points(24)
	for i, m := range modes {
		vals := make(plotter.Values, len(kinds))
		for j, k := range kinds {
			if f, ok := s.res.figure("content/" + k + "/" + m.key); ok {
				vals[j] = f.Latency.Median / 1e3
				have = true
			}
		}
		b, err := plotter.NewBarChart(vals, w)
		if err != nil {
			return nil, err
		}
		b.Color = colour(i)
		b.LineStyle.Width = 0
		b.Offset = vg.Length(float64(i)-0.5) * w
		p.Add(b)
		p.Legend.Add(m.label, b)
	}
	if !have {
		return nil, nil
	}
	p.NominalX(kinds...)
	p.Y.Min = 0
	if err := s.addLimitLine(p, -0.5, float64(len(kinds))-0.5, s.res.Limits.LimitNs/1e3, "limit: fault chain median"); err != nil {
		return nil, err
	}
	headroom(p, false)
	return p, nil
}

func (s *suite) plotLoss() (*plot.Plot, error) {
	if len(s.plots.loss) == 0 {
		return nil, nil
	}
	var series []labelled
	if len(s.plots.samples["read_fault"]) > 0 {
		series = append(series, labelled{"read_fault", "no loss injected (read fault part)"})
	}
	series = append(series, s.plots.loss...)
	return s.cdfPlot("Remote read fault under packet loss, KCP (CDF)", series)
}

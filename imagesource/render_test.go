package imagesource

import (
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/smart-imaging/smart_imaging/imagesource/wadopath"
)

const (
	rStudy    = "1.2.840.113619.2.55.3"
	rInstance = "studies/1.2.840.113619.2.55.3/series/1.2.840.113619.2.55.3.1/instances/1.2.840.113619.2.55.3.1.7"
)

func mustPath(t *testing.T, s string) wadopath.Path {
	t.Helper()
	p, err := wadopath.Parse(s)
	if err != nil {
		t.Fatalf("wadopath.Parse(%q): %v", s, err)
	}
	return p
}

func TestCheckRenderAccepts(t *testing.T) {
	tests := []struct {
		path, query string
		want        RenderParams
	}{
		{"studies/" + rStudy + "/rendered", "", RenderParams{}},
		{rInstance + "/thumbnail", "viewport=128,128", RenderParams{Viewport: Viewport{Width: 128, Height: 128}}},
		{rInstance + "/rendered", "viewport=2048,2048&quality=80", RenderParams{Viewport: Viewport{Width: 2048, Height: 2048}, Quality: 80}},
		{rInstance + "/rendered", "viewport=2048,1", RenderParams{Viewport: Viewport{Width: 2048, Height: 1}}},
		{rInstance + "/rendered", "viewport=100,100,0,0,50,-50", RenderParams{Viewport: Viewport{Width: 100, Height: 100,
			Region: &Region{X: 0, Y: 0, Width: 50, Height: -50}}}},
		{rInstance + "/rendered", "viewport=100,100,,,,", RenderParams{Viewport: Viewport{Width: 100, Height: 100, Region: &Region{}}}},
		{rInstance + "/rendered", "window=40,400", RenderParams{Window: &Window{Center: 40, Width: 400, Function: "linear"}}},
		{rInstance + "/rendered", "window=-600.5,1500,LINEAR-EXACT", RenderParams{Window: &Window{Center: -600.5, Width: 1500, Function: "linear-exact"}}},
		{rInstance + "/rendered", "window=0,0.5,sigmoid", RenderParams{Window: &Window{Center: 0, Width: 0.5, Function: "sigmoid"}}},
		{rInstance + "/rendered", "iccprofile=no&annotation=patient&charset=UTF-8", RenderParams{}},
		{rInstance + "/frames/3/rendered", "viewport=64,64", RenderParams{Viewport: Viewport{Width: 64, Height: 64}}},
		// Parameters DICOMweb does not define for rendered resources are
		// not this check's business (sources pass none of them on).
		{rInstance + "/rendered", "foo=bar&viewport=1,1", RenderParams{Viewport: Viewport{Width: 1, Height: 1}}},
	}
	for _, tt := range tests {
		t.Run(tt.path+"?"+tt.query, func(t *testing.T) {
			q, _ := url.ParseQuery(tt.query)
			got, err := CheckRender(mustPath(t, tt.path), q, DefaultMaxRenderSize)
			if err != nil {
				t.Fatalf("CheckRender: %v", err)
			}
			if !sameParams(got, tt.want) {
				t.Errorf("got %+v (region %+v, window %+v), want %+v", got, got.Viewport.Region, got.Window, tt.want)
			}
		})
	}
}

func sameParams(a, b RenderParams) bool {
	if a.Quality != b.Quality || a.Viewport.Width != b.Viewport.Width || a.Viewport.Height != b.Viewport.Height {
		return false
	}
	if (a.Viewport.Region == nil) != (b.Viewport.Region == nil) || (a.Window == nil) != (b.Window == nil) {
		return false
	}
	if a.Viewport.Region != nil && *a.Viewport.Region != *b.Viewport.Region {
		return false
	}
	return a.Window == nil || *a.Window == *b.Window
}

func TestCheckRenderRefuses(t *testing.T) {
	tests := []struct {
		name, path, query string
		tooLarge          bool
	}{
		// The attack: the PACS spent 13 s and 743 MB on one of these.
		{"a 30000x30000 thumbnail", rInstance + "/thumbnail", "viewport=30000,30000", true},
		{"a 30000x30000 rendering", rInstance + "/rendered", "viewport=30000,30000", true},
		{"one side past the bound", "studies/" + rStudy + "/rendered", "viewport=2049,16", true},
		{"the other side past the bound", rInstance + "/frames/1/rendered", "viewport=16,2049", true},
		{"a huge number", rInstance + "/rendered", "viewport=99999999999999999999,1", true},
		{"a small viewport, then a huge one (the PACS takes the last)", rInstance + "/thumbnail", "viewport=16,16&viewport=30000,30000", false},
		{"quality twice", rInstance + "/rendered", "quality=50&quality=90", false},
		{"window twice", rInstance + "/rendered", "window=1,2&window=3,4", false},
		{"charset twice", rInstance + "/rendered", "charset=UTF-8&charset=UTF-8", false},
		{"viewport of one number", rInstance + "/rendered", "viewport=100", false},
		{"viewport of three numbers", rInstance + "/rendered", "viewport=100,100,3", false},
		{"viewport with an empty height", rInstance + "/rendered", "viewport=100,", false},
		{"viewport zero", rInstance + "/rendered", "viewport=0,10", false},
		{"viewport negative", rInstance + "/rendered", "viewport=-10,10", false},
		{"viewport not a number", rInstance + "/rendered", "viewport=abc,10", false},
		{"viewport a fraction", rInstance + "/rendered", "viewport=10.5,10", false},
		{"viewport with a plus sign", rInstance + "/rendered", "viewport=+10,10", false},
		{"a region far outside any image", rInstance + "/rendered", "viewport=10,10,0,0,9999999,10", false},
		{"a negative region origin", rInstance + "/rendered", "viewport=10,10,-1,0,5,5", false},
		{"quality 0", rInstance + "/rendered", "quality=0", false},
		{"quality 101", rInstance + "/rendered", "quality=101", false},
		{"quality not a number", rInstance + "/rendered", "quality=high", false},
		{"window of one number", rInstance + "/rendered", "window=40", false},
		{"window not numbers", rInstance + "/rendered", "window=a,b", false},
		{"window width zero", rInstance + "/rendered", "window=10,0", false},
		{"window width NaN", rInstance + "/rendered", "window=10,NaN", false},
		{"window center infinite", rInstance + "/rendered", "window=Inf,10", false},
		{"a linear window narrower than 1", rInstance + "/rendered", "window=10,0.5,linear", false},
		{"an unknown window function", rInstance + "/rendered", "window=10,20,cubic", false},
		{"an overlong parameter", rInstance + "/rendered", "annotation=" + strings.Repeat("a", 300), false},
		{"a control character", rInstance + "/rendered", "charset=UTF-8%0d%0aX:1", false},
		{"two frames rendered at once", rInstance + "/frames/1,2/rendered", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q, err := url.ParseQuery(tt.query)
			if err != nil {
				t.Fatal(err)
			}
			_, err = CheckRender(mustPath(t, tt.path), q, DefaultMaxRenderSize)
			e, ok := AsError(err)
			if !ok || e.Status != http.StatusBadRequest || e.Code != "invalid" {
				t.Fatalf("err = %v, want a 400 invalid *Error", err)
			}
			if errors.Is(err, ErrRenderTooLarge) != tt.tooLarge {
				t.Errorf("errors.Is(err, ErrRenderTooLarge) = %v, want %v (%v)", !tt.tooLarge, tt.tooLarge, err)
			}
			if tt.tooLarge && !strings.Contains(e.Message, "2048") {
				t.Errorf("message %q does not say the bound", e.Message)
			}
		})
	}
}

func TestCheckRenderBoundIsTheRoutes(t *testing.T) {
	p := mustPath(t, rInstance+"/rendered")
	q := url.Values{"viewport": {"4096,4096"}}
	if _, err := CheckRender(p, q, 4096); err != nil {
		t.Errorf("max 4096: %v", err)
	}
	if _, err := CheckRender(p, q, 512); !errors.Is(err, ErrRenderTooLarge) {
		t.Errorf("max 512: err = %v, want ErrRenderTooLarge", err)
	}
	// No bound configured (0) means the default.
	if _, err := CheckRender(p, q, 0); !errors.Is(err, ErrRenderTooLarge) {
		t.Errorf("max 0: err = %v, want the default bound %d", err, DefaultMaxRenderSize)
	}
}

func TestCheckRenderIgnoresOtherResources(t *testing.T) {
	// A frames or metadata request carries no rendering parameters; a
	// source passes none of them on, so they are not refused here.
	for _, s := range []string{rInstance, rInstance + "/metadata", rInstance + "/frames/1,2"} {
		q := url.Values{"viewport": {"30000,30000"}}
		if got, err := CheckRender(mustPath(t, s), q, DefaultMaxRenderSize); err != nil || got != (RenderParams{}) {
			t.Errorf("%s: %+v, %v; want nothing to check", s, got, err)
		}
	}
}

// FuzzCheckRender checks that whatever passes stays inside the bound.
func FuzzCheckRender(f *testing.F) {
	f.Add("viewport=30000,30000")
	f.Add("viewport=10,10,0,0,5,5&quality=5&window=1,2,sigmoid")
	f.Add("viewport=1,1&viewport=2,2")
	p, err := wadopath.Parse(rInstance + "/rendered")
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		q, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		got, err := CheckRender(p, q, 64)
		if err != nil {
			if _, ok := AsError(err); !ok {
				t.Fatalf("error %v is not an *Error", err)
			}
			return
		}
		if v := got.Viewport; v.Width < 0 || v.Width > 64 || v.Height < 0 || v.Height > 64 || (v.Width == 0) != (v.Height == 0) {
			t.Fatalf("%q: viewport %+v passed a bound of 64", raw, v)
		}
		if r := got.Viewport.Region; r != nil && (r.X < 0 || r.Y < 0 || r.X > MaxImageSide || r.Y > MaxImageSide ||
			r.Width < -MaxImageSide || r.Width > MaxImageSide || r.Height < -MaxImageSide || r.Height > MaxImageSide) {
			t.Fatalf("%q: region %+v", raw, *r)
		}
		for _, name := range RenderParamNames {
			if len(q[name]) > 1 {
				t.Fatalf("%q: %s given %d times passed", raw, name, len(q[name]))
			}
		}
	})
}

package imagesource

import (
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/smart-imaging/smart_imaging/imagesource/wadopath"
)

// DefaultMaxRenderSize is the largest width or height, in pixels, that a
// rendered or thumbnail request may ask for when the route sets no
// max_render_size. A PACS renders into a buffer of the size asked for,
// whatever the image's own size: Orthanc spent 13 s and 743 MB on one
// 30000x30000 thumbnail.
const DefaultMaxRenderSize = 2048

// MinMaxRenderSize is the smallest max_render_size a route may configure:
// the size a thumbnail is rendered at when the request names none.
const MinMaxRenderSize = 128

// MaxImageSide is the largest image side DICOM can describe (Rows and
// Columns are 16-bit): the most a route's max_render_size may be, and the
// bound of a viewport's source region.
const MaxImageSide = 65535

// maxRenderParamLen bounds each rendering parameter's value.
const maxRenderParamLen = 256

// RenderParamNames are the query parameters DICOMweb defines for rendered
// and thumbnail resources (PS3.18 §8.3.5.1).
var RenderParamNames = []string{"quality", "viewport", "window", "iccprofile", "annotation", "charset"}

// ErrRenderTooLarge is wrapped by the refusal of a viewport larger than
// the route renders.
var ErrRenderTooLarge = errors.New("rendering larger than this server allows")

// RenderParams are the checked query parameters of a rendered or thumbnail
// request. Zero fields were not given.
type RenderParams struct {
	// Viewport is the box the image is scaled to fit.
	Viewport Viewport
	// Quality is the lossy compression quality, 1 to 100.
	Quality int
	// Window replaces the image's VOI window.
	Window *Window
}

// Viewport is the viewport parameter: vw,vh[,sx,sy,sw,sh].
type Viewport struct {
	// Width and Height are the box, at most the route's max_render_size;
	// both zero when no viewport was given.
	Width, Height int
	// Region is the source region to render (sx, sy, sw, sh), when given.
	Region *Region
}

// Region is a viewport's source region in image pixels. Zero values were
// left empty (origin 0, whole extent); a negative width or height flips
// the image.
type Region struct {
	X, Y, Width, Height int
}

// Window is the window parameter: center,width[,function].
type Window struct {
	Center, Width float64
	// Function is "linear" (the default), "linear-exact" or "sigmoid".
	Function string
}

// CheckRender checks a rendered or thumbnail request before any source
// sees it, so every source (and the PACS behind it) is held to the same
// bounds: at most one frame rendered at a time; each rendering parameter
// given at most once (a PACS may honour the last of several: a small
// viewport followed by a huge one would pass a check of the first);
// viewport sides from 1 to maxSize (0: DefaultMaxRenderSize), region within
// MaxImageSide; quality 1 to 100; window numeric, with a positive width.
// Failures are 400 *Error; a viewport past maxSize wraps
// ErrRenderTooLarge. Other resources carry no rendering parameters (sources
// pass none on): zero params and no error.
func CheckRender(p wadopath.Path, q url.Values, maxSize int) (RenderParams, error) {
	var rp RenderParams
	if p.Resource != wadopath.Rendered && p.Resource != wadopath.Thumbnail {
		return rp, nil
	}
	if maxSize <= 0 {
		maxSize = DefaultMaxRenderSize
	}
	if len(p.Frames) > 1 {
		return rp, renderError(nil, "render one frame at a time (frames/{n}/%s)", p.Resource)
	}
	for _, name := range RenderParamNames {
		vs := q[name]
		if len(vs) > 1 {
			return rp, renderError(nil, "%s is given %d times; give it once", name, len(vs))
		}
		if len(vs) == 1 {
			v := vs[0]
			if len(v) > maxRenderParamLen || strings.IndexFunc(v, func(c rune) bool { return c < 0x20 || c == 0x7f }) >= 0 {
				return rp, renderError(nil, "%s is longer than %d bytes or holds control characters", name, maxRenderParamLen)
			}
		}
	}
	var err error
	if v := q.Get("viewport"); v != "" {
		if rp.Viewport, err = parseViewport(v, maxSize); err != nil {
			return RenderParams{}, err
		}
	}
	if v := q.Get("quality"); v != "" {
		n, ok := digits(v, 3)
		if !ok || n < 1 || n > 100 {
			return RenderParams{}, renderError(nil, "quality %q must be an integer from 1 to 100", v)
		}
		rp.Quality = n
	}
	if v := q.Get("window"); v != "" {
		if rp.Window, err = parseWindow(v); err != nil {
			return RenderParams{}, err
		}
	}
	return rp, nil
}

func renderError(cause error, format string, args ...any) *Error {
	return &Error{Status: http.StatusBadRequest, Code: "invalid", Message: fmt.Sprintf(format, args...), Err: cause}
}

func parseViewport(v string, maxSize int) (Viewport, error) {
	parts := strings.Split(v, ",")
	if len(parts) != 2 && len(parts) != 6 {
		return Viewport{}, renderError(nil, "viewport %q must be width,height or width,height,sx,sy,sw,sh", v)
	}
	var vp Viewport
	for i, dst := range []*int{&vp.Width, &vp.Height} {
		s := parts[i]
		significant := strings.TrimLeft(s, "0")
		if s == "" || strings.Trim(s, "0123456789") != "" || significant == "" {
			return Viewport{}, renderError(nil, "viewport %q must start with two positive integers (width,height)", v)
		}
		n, ok := digits(significant, 6)
		if !ok || n > maxSize {
			return Viewport{}, renderError(ErrRenderTooLarge,
				"viewport %q is larger than this server renders: at most %dx%d pixels", v, maxSize, maxSize)
		}
		*dst = n
	}
	if len(parts) == 6 {
		r := &Region{}
		for i, dst := range []*int{&r.X, &r.Y, &r.Width, &r.Height} {
			s := parts[2+i]
			if s == "" {
				continue
			}
			neg := i >= 2 && strings.HasPrefix(s, "-")
			n, ok := digits(strings.TrimPrefix(s, "-"), 5)
			if !ok || n > MaxImageSide || (!neg && s[0] == '-') {
				return Viewport{}, renderError(nil, "viewport %q: sx and sy must be integers from 0, sw and sh integers, each at most %d pixels", v, MaxImageSide)
			}
			if neg {
				n = -n
			}
			*dst = n
		}
		vp.Region = r
	}
	return vp, nil
}

// digits reads a non-negative decimal integer of at most maxLen digits
// (no sign, no spaces).
func digits(s string, maxLen int) (int, bool) {
	if s == "" || len(s) > maxLen || strings.Trim(s, "0123456789") != "" {
		return 0, false
	}
	n, err := strconv.Atoi(s)
	return n, err == nil
}

func parseWindow(v string) (*Window, error) {
	parts := strings.Split(v, ",")
	if len(parts) != 2 && len(parts) != 3 {
		return nil, renderError(nil, "window %q must be center,width[,function]", v)
	}
	c, err1 := strconv.ParseFloat(strings.TrimSpace(parts[0]), 64)
	w, err2 := strconv.ParseFloat(strings.TrimSpace(parts[1]), 64)
	if err1 != nil || err2 != nil || math.IsNaN(c) || math.IsInf(c, 0) || math.IsNaN(w) || math.IsInf(w, 0) || w <= 0 {
		return nil, renderError(nil, "window %q needs a numeric center and a positive width", v)
	}
	win := &Window{Center: c, Width: w, Function: "linear"}
	if len(parts) == 3 {
		switch f := strings.ToLower(strings.TrimSpace(parts[2])); f {
		case "linear", "linear-exact", "sigmoid":
			win.Function = f
		default:
			return nil, renderError(nil, "window function %q is not linear, linear-exact or sigmoid", parts[2])
		}
	}
	if win.Function == "linear" && w < 1 {
		return nil, renderError(nil, "a linear window needs a width of at least 1")
	}
	return win, nil
}

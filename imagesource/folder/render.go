package folder

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/jpeg"
	"image/png"
	"io"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/suyashkumar/dicom"
	"github.com/suyashkumar/dicom/pkg/tag"

	"github.com/smart-imaging/smart_imaging/imagesource"
	"github.com/smart-imaging/smart_imaging/imagesource/wadopath"
)

const (
	// thumbnailSide is the default box a thumbnail fits in.
	thumbnailSide = 128
	// defaultQuality is the JPEG quality when the request names none.
	defaultQuality = 90
)

// renderOptions are the rendered-resource query parameters (PS3.18 §8.3.5).
type renderOptions struct {
	// vw, vh is the box the image is scaled to fit (0: natural size).
	vw, vh int
	// maxSide caps both sides of the image (the route's max_render_size).
	maxSide int
	quality int
	// window, when set, replaces the file's VOI window.
	window   bool
	center   float64
	width    float64
	function string // LINEAR, LINEAR_EXACT or SIGMOID
	// shrinkOnly keeps a small image at its size (default thumbnails).
	shrinkOnly bool
}

func badRequest(format string, args ...any) *imagesource.Error {
	return imagesource.Errorf(http.StatusBadRequest, "invalid", format, args...)
}

// parseRenderOptions reads the query through imagesource.CheckRender, so
// the folder source holds requests to the same bounds as the handler does
// (maxSide: the route's max_render_size, 0 for the default).
func parseRenderOptions(p wadopath.Path, q url.Values, maxSide int) (renderOptions, error) {
	if maxSide <= 0 {
		maxSide = imagesource.DefaultMaxRenderSize
	}
	o := renderOptions{quality: defaultQuality, maxSide: maxSide}
	rp, err := imagesource.CheckRender(p, q, maxSide)
	if err != nil {
		return o, err
	}
	if p.Resource == wadopath.Thumbnail {
		o.vw, o.vh, o.shrinkOnly = min(thumbnailSide, maxSide), min(thumbnailSide, maxSide), true
	}
	if v := rp.Viewport; v.Width > 0 {
		if v.Region != nil {
			return o, badRequest("viewport must be width,height: this image source does not crop")
		}
		o.vw, o.vh, o.shrinkOnly = v.Width, v.Height, false
	}
	if rp.Quality > 0 {
		o.quality = rp.Quality
	}
	if win := rp.Window; win != nil {
		o.window, o.center, o.width = true, win.Center, win.Width
		o.function = strings.ToUpper(strings.ReplaceAll(win.Function, "-", "_"))
	}
	return o, nil
}

func (s *Source) serveRendered(w http.ResponseWriter, r *http.Request, p wadopath.Path, inst *instance, maxRender int) error {
	ctype, err := negotiateImage(parseAccept(r))
	if err != nil {
		return err
	}
	opts, err := parseRenderOptions(p, r.URL.Query(), maxRender)
	if err != nil {
		return err
	}
	frameNo := 1
	if len(p.Frames) > 0 {
		// CheckRender allowed one frame at most.
		frameNo = p.Frames[0]
	}
	if err := checkFrameNumbers(inst, []int{frameNo}); err != nil {
		return err
	}
	ras, err := renderFrame(inst, frameNo, opts)
	if err != nil {
		return err
	}
	ras = ras.fit(opts.vw, opts.vh, opts.maxSide, opts.shrinkOnly)
	var buf bytes.Buffer
	if ctype == "image/png" {
		enc := png.Encoder{CompressionLevel: png.BestSpeed}
		err = enc.Encode(&buf, ras.image())
	} else {
		err = jpeg.Encode(&buf, ras.image(), &jpeg.Options{Quality: opts.quality})
	}
	if err != nil {
		return fmt.Errorf("folder image source: encode %s: %w", ctype, err)
	}
	h := w.Header()
	h.Set("Content-Type", ctype)
	h.Set("Content-Length", strconv.Itoa(buf.Len()))
	h.Set("Cache-Control", "private")
	w.WriteHeader(http.StatusOK)
	if isHead(r) {
		return nil
	}
	if _, err := w.Write(buf.Bytes()); err != nil {
		return fmt.Errorf("folder image source: send image: %w", err)
	}
	return nil
}

// renderFrame turns frame n of an instance into 8-bit pixels.
func renderFrame(inst *instance, n int, o renderOptions) (raster, error) {
	if inst.rows <= 0 || inst.cols <= 0 {
		return raster{}, notAcceptable("instance %s has no image to render", inst.sopUID)
	}
	if inst.ts == tsJPEGBase {
		return renderJPEG(inst, n)
	}
	if !isNative(inst.ts) {
		return raster{}, notAcceptable("instance %s is stored in transfer syntax %s, which this image source cannot render", inst.sopUID, inst.ts)
	}
	px, err := openPixels(inst)
	if err != nil {
		return raster{}, err
	}
	defer px.Close()
	if err := px.checkFrames([]int{n}); err != nil {
		return raster{}, err
	}
	buf, err := px.frame(n)
	if err != nil {
		return raster{}, err
	}
	return px.ip.render(buf, o, inst.sopUID)
}

// render converts one little-endian native frame.
func (ip imagePixel) render(buf []byte, o renderOptions, sop string) (raster, error) {
	switch {
	case ip.samples == 1 && (ip.bitsAllocated == 8 || ip.bitsAllocated == 16 || ip.bitsAllocated == 32):
		return ip.renderGray(buf, o), nil
	case ip.samples == 3 && ip.bitsAllocated == 8 && (ip.photometric == "RGB" || ip.photometric == "YBR_FULL"):
		return ip.renderColor(buf), nil
	}
	return raster{}, notAcceptable("instance %s has a pixel layout this image source cannot render (%s, %d samples of %d bits)", sop, ip.photometric, ip.samples, ip.bitsAllocated)
}

// renderGray applies the modality rescale, then the VOI window (from the
// request, else the file, else the frame's range), then MONOCHROME1
// inversion.
func (ip imagePixel) renderGray(buf []byte, o renderOptions) raster {
	n := ip.rows * ip.cols
	bytesPer := ip.bitsAllocated / 8
	mask := uint64(1)<<uint(ip.bitsStored) - 1
	signBit := uint64(1) << uint(ip.bitsStored-1)
	vals := make([]float64, n)
	lo, hi := math.Inf(1), math.Inf(-1)
	for i := 0; i < n; i++ {
		var u uint64
		switch bytesPer {
		case 1:
			u = uint64(buf[i])
		case 2:
			u = uint64(binary.LittleEndian.Uint16(buf[2*i:]))
		default:
			u = uint64(binary.LittleEndian.Uint32(buf[4*i:]))
		}
		u &= mask
		v := int64(u)
		if ip.signed && u&signBit != 0 {
			v -= int64(mask) + 1
		}
		x := float64(v)*ip.slope + ip.intercept
		vals[i] = x
		lo, hi = min(lo, x), max(hi, x)
	}
	c, w, fn := ip.windowCenter, ip.windowWidth, ip.voiFunction
	switch {
	case o.window:
		c, w, fn = o.center, o.width, o.function
	case ip.hasWindow:
	default:
		c, w, fn = (lo+hi)/2, max(hi-lo, 1), "LINEAR_EXACT"
	}
	invert := ip.photometric == "MONOCHROME1"
	out := raster{w: ip.cols, h: ip.rows, c: 1, pix: make([]uint8, n)}
	for i, x := range vals {
		y := voi(x, c, w, fn)
		if invert {
			y = 255 - y
		}
		out.pix[i] = y
	}
	return out
}

// voi maps a value through a VOI LUT function (PS3.3 C.11.2.1.2) to 0–255.
func voi(x, c, w float64, fn string) uint8 {
	var y float64
	switch fn {
	case "SIGMOID":
		y = 255 / (1 + math.Exp(-4*(x-c)/w))
	case "LINEAR_EXACT":
		switch {
		case x <= c-w/2:
			y = 0
		case x > c+w/2:
			y = 255
		default:
			y = ((x-c)/w + 0.5) * 255
		}
	default:
		switch {
		case x <= c-0.5-(w-1)/2:
			y = 0
		case x > c-0.5+(w-1)/2 || w <= 1:
			y = 255
		default:
			y = ((x-(c-0.5))/(w-1) + 0.5) * 255
		}
	}
	return uint8(math.Round(min(max(y, 0), 255)))
}

func (ip imagePixel) renderColor(buf []byte) raster {
	n := ip.rows * ip.cols
	out := raster{w: ip.cols, h: ip.rows, c: 4, pix: make([]uint8, 4*n)}
	for i := 0; i < n; i++ {
		var a, b, c uint8
		if ip.planar == 1 {
			a, b, c = buf[i], buf[n+i], buf[2*n+i]
		} else {
			a, b, c = buf[3*i], buf[3*i+1], buf[3*i+2]
		}
		if ip.photometric == "YBR_FULL" {
			a, b, c = color.YCbCrToRGB(a, b, c)
		}
		out.pix[4*i], out.pix[4*i+1], out.pix[4*i+2], out.pix[4*i+3] = a, b, c, 255
	}
	return out
}

// renderJPEG decodes a frame of a JPEG Baseline instance.
func renderJPEG(inst *instance, n int) (ras raster, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("folder image source: %s: cannot parse DICOM: %v", inst.rel, r)
		}
	}()
	f, size, err := inst.open()
	if err != nil {
		return raster{}, err
	}
	defer f.Close()
	ds, err := dicom.Parse(io.NewSectionReader(f, 0, size), size, nil,
		dicom.AllowUnknownSpecificCharacterSet(), dicom.AllowMissingMetaElementGroupLength())
	if err != nil {
		return raster{}, fmt.Errorf("folder image source: parse %s: %w", inst.rel, err)
	}
	e, err := ds.FindElementByTag(tag.PixelData)
	if err != nil {
		return raster{}, notAcceptable("instance %s has no image to render", inst.sopUID)
	}
	info, ok := e.Value.GetValue().(dicom.PixelDataInfo)
	if !ok || !info.IsEncapsulated || len(info.Frames) == 0 {
		return raster{}, fmt.Errorf("folder image source: %s: unexpected Pixel Data form", inst.rel)
	}
	var data []byte
	switch {
	case len(info.Frames) == inst.frames:
		data = info.Frames[n-1].EncapsulatedData.Data
	case inst.frames == 1:
		for _, fr := range info.Frames {
			data = append(data, fr.EncapsulatedData.Data...)
		}
	default:
		return raster{}, notAcceptable("instance %s splits frames over fragments in a way this image source cannot render", inst.sopUID)
	}
	img, err := jpeg.Decode(bytes.NewReader(data))
	if err != nil {
		return raster{}, notAcceptable("instance %s: cannot decode its JPEG frame: %v", inst.sopUID, err)
	}
	return rasterOf(img), nil
}

// raster is an 8-bit image with 1 (gray) or 4 (RGBA) channels.
type raster struct {
	w, h, c int
	pix     []uint8
}

func rasterOf(img image.Image) raster {
	b := img.Bounds()
	if g, ok := img.(*image.Gray); ok {
		out := raster{w: b.Dx(), h: b.Dy(), c: 1, pix: make([]uint8, b.Dx()*b.Dy())}
		for y := 0; y < out.h; y++ {
			copy(out.pix[y*out.w:(y+1)*out.w], g.Pix[y*g.Stride:])
		}
		return out
	}
	rgba := image.NewRGBA(image.Rect(0, 0, b.Dx(), b.Dy()))
	draw.Draw(rgba, rgba.Bounds(), img, b.Min, draw.Src)
	return raster{w: b.Dx(), h: b.Dy(), c: 4, pix: rgba.Pix}
}

func (r raster) image() image.Image {
	rect := image.Rect(0, 0, r.w, r.h)
	if r.c == 1 {
		return &image.Gray{Pix: r.pix, Stride: r.w, Rect: rect}
	}
	return &image.RGBA{Pix: r.pix, Stride: 4 * r.w, Rect: rect}
}

// fit scales the raster, keeping its aspect ratio, to fit a vw×vh box (or,
// with no box, to fit a maxSide×maxSide one). With shrinkOnly a raster that
// already fits keeps its size.
func (r raster) fit(vw, vh, maxSide int, shrinkOnly bool) raster {
	if vw <= 0 || vh <= 0 {
		if r.w <= maxSide && r.h <= maxSide {
			return r
		}
		vw, vh = maxSide, maxSide
	}
	scale := math.Min(float64(vw)/float64(r.w), float64(vh)/float64(r.h))
	if shrinkOnly && scale >= 1 {
		return r
	}
	tw := max(1, min(vw, int(math.Round(float64(r.w)*scale))))
	th := max(1, min(vh, int(math.Round(float64(r.h)*scale))))
	if tw == r.w && th == r.h {
		return r
	}
	return r.resize(tw, th)
}

// resize averages the source pixels under each target pixel when shrinking
// and interpolates bilinearly when enlarging.
func (r raster) resize(tw, th int) raster {
	out := raster{w: tw, h: th, c: r.c, pix: make([]uint8, tw*th*r.c)}
	shrink := tw <= r.w && th <= r.h
	sum := make([]float64, r.c)
	for y := 0; y < th; y++ {
		for x := 0; x < tw; x++ {
			o := (y*tw + x) * r.c
			if shrink {
				x0, x1 := x*r.w/tw, max(x*r.w/tw+1, (x+1)*r.w/tw)
				y0, y1 := y*r.h/th, max(y*r.h/th+1, (y+1)*r.h/th)
				clear(sum)
				for sy := y0; sy < y1; sy++ {
					for sx := x0; sx < x1; sx++ {
						i := (sy*r.w + sx) * r.c
						for k := 0; k < r.c; k++ {
							sum[k] += float64(r.pix[i+k])
						}
					}
				}
				cnt := float64((x1 - x0) * (y1 - y0))
				for k := 0; k < r.c; k++ {
					out.pix[o+k] = uint8(math.Round(sum[k] / cnt))
				}
				continue
			}
			fx := math.Max(0, (float64(x)+0.5)*float64(r.w)/float64(tw)-0.5)
			fy := math.Max(0, (float64(y)+0.5)*float64(r.h)/float64(th)-0.5)
			x0, y0 := min(int(fx), r.w-1), min(int(fy), r.h-1)
			x1, y1 := min(x0+1, r.w-1), min(y0+1, r.h-1)
			ax, ay := fx-float64(x0), fy-float64(y0)
			for k := 0; k < r.c; k++ {
				p := func(px, py int) float64 { return float64(r.pix[(py*r.w+px)*r.c+k]) }
				top := p(x0, y0)*(1-ax) + p(x1, y0)*ax
				bot := p(x0, y1)*(1-ax) + p(x1, y1)*ax
				out.pix[o+k] = uint8(math.Round(top*(1-ay) + bot*ay))
			}
		}
	}
	return out
}

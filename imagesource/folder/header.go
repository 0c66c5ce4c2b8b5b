package folder

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/suyashkumar/dicom"
	"github.com/suyashkumar/dicom/pkg/tag"
	"github.com/suyashkumar/dicom/pkg/uid"
)

// Transfer syntaxes whose pixel data is stored native (uncompressed).
const (
	tsImplicitLE = "1.2.840.10008.1.2"
	tsExplicitLE = "1.2.840.10008.1.2.1"
	tsDeflatedLE = "1.2.840.10008.1.2.1.99"
	tsExplicitBE = "1.2.840.10008.1.2.2"
	tsJPEGBase   = "1.2.840.10008.1.2.4.50"
)

func isNative(ts string) bool {
	switch ts {
	case tsImplicitLE, tsExplicitLE, tsDeflatedLE, tsExplicitBE:
		return true
	}
	return false
}

// header is the top-level part of a file before its Pixel Data.
type header struct {
	ts    string
	elems []*dicom.Element
	// hasPixel is set when Pixel Data (7FE0,0010) was reached.
	hasPixel bool
	// pixelOffset is the file offset of the Pixel Data value, or -1 when it
	// is unknown (deflated files).
	pixelOffset int64
	// pixelLength is the Pixel Data value length, or -1 for an undefined
	// length (encapsulated, compressed pixel data).
	pixelLength int64
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// readHeader parses the file meta and the top-level elements of f whose
// group is at most stop, and stops before Pixel Data in any case, recording
// where its value lies. Elements after Pixel Data are not read.
//
// The position of Pixel Data is found by handing the parser our own
// bufio.Reader (bufio.NewReader returns it unchanged) over a counting
// reader: the bytes consumed are the bytes counted minus those still
// buffered, and the next tag is peeked before each element is parsed.
func readHeader(f *os.File, stop uint16) (h *header, err error) {
	defer func() {
		// The DICOM library panics on some malformed input.
		if r := recover(); r != nil {
			h, err = nil, fmt.Errorf("cannot parse DICOM: %v", r)
		}
	}()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("stat: %w", err)
	}
	size := fi.Size()
	if size < 132 || !hasPreamble(f) {
		return nil, errNotPart10
	}
	cr := &countingReader{r: io.NewSectionReader(f, 0, size)}
	br := bufio.NewReaderSize(cr, 64<<10)
	p, err := dicom.NewParser(br, size, nil,
		dicom.SkipPixelData(),
		dicom.AllowUnknownSpecificCharacterSet(),
		dicom.AllowMissingMetaElementGroupLength())
	if err != nil {
		return nil, fmt.Errorf("cannot parse DICOM file meta: %w", err)
	}
	meta := p.GetMetadata()
	h = &header{pixelOffset: -1, pixelLength: -1}
	h.elems = append(h.elems, meta.Elements...)
	h.ts = h.str(tag.TransferSyntaxUID)
	if h.ts == "" {
		return nil, errors.New("file meta has no TransferSyntaxUID")
	}
	if _, _, err := uid.ParseTransferSyntaxUID(h.ts); err != nil {
		return nil, fmt.Errorf("unsupported transfer syntax %q", h.ts)
	}
	var bo binary.ByteOrder = binary.LittleEndian
	if h.ts == tsExplicitBE {
		bo = binary.BigEndian
	}
	implicit := h.ts == tsImplicitLE
	deflated := h.ts == tsDeflatedLE
	for {
		if !deflated {
			pos := cr.n - int64(br.Buffered())
			pk, err := br.Peek(4)
			if err != nil {
				break // end of file
			}
			g, el := bo.Uint16(pk[0:2]), bo.Uint16(pk[2:4])
			if g == 0x7FE0 && el == 0x0010 {
				off, vl, err := pixelValueAt(br, bo, implicit)
				if err != nil {
					return nil, err
				}
				h.hasPixel, h.pixelOffset, h.pixelLength = true, pos+off, vl
				break
			}
			if g > stop {
				break
			}
		}
		e, err := p.Next()
		if err != nil {
			if errors.Is(err, dicom.ErrorEndOfDICOM) || errors.Is(err, io.EOF) {
				break
			}
			return nil, fmt.Errorf("cannot parse DICOM: %w", err)
		}
		if e.Tag == tag.PixelData {
			h.hasPixel = true
			if e.ValueLength != tag.VLUndefinedLength {
				h.pixelLength = int64(e.ValueLength)
			}
			break
		}
		h.elems = append(h.elems, e)
		if e.Tag.Group > stop {
			break
		}
	}
	return h, nil
}

// pixelValueAt reads the Pixel Data element header at the reader's position
// (without consuming it) and returns the offset of its value from there and
// its length (-1 when undefined).
func pixelValueAt(br *bufio.Reader, bo binary.ByteOrder, implicit bool) (int64, int64, error) {
	pk, err := br.Peek(12)
	if err != nil {
		return 0, 0, fmt.Errorf("truncated Pixel Data header: %w", err)
	}
	var off int64
	var vl uint32
	switch {
	case implicit:
		off, vl = 8, bo.Uint32(pk[4:8])
	default:
		switch vr := string(pk[4:6]); vr {
		case "OB", "OW", "OD", "OF", "OL", "OV", "UN", "SQ", "UC", "UR", "UT":
			off, vl = 12, bo.Uint32(pk[8:12])
		default:
			off, vl = 8, uint32(bo.Uint16(pk[6:8]))
		}
	}
	if vl == tag.VLUndefinedLength {
		return off, -1, nil
	}
	return off, int64(vl), nil
}

// find returns the top-level element with tag t, or nil.
func (h *header) find(t tag.Tag) *dicom.Element {
	for _, e := range h.elems {
		if e.Tag == t {
			return e
		}
	}
	return nil
}

// str returns the first value of a string element ("" when absent).
func (h *header) str(t tag.Tag) string {
	e := h.find(t)
	if e == nil || e.Value == nil {
		return ""
	}
	if v, ok := e.Value.GetValue().([]string); ok && len(v) > 0 {
		return strings.TrimSpace(v[0])
	}
	return ""
}

// num returns the i-th value of a numeric element (US, IS, DS, FL, …).
func (h *header) num(t tag.Tag, i int) (float64, bool) {
	e := h.find(t)
	if e == nil || e.Value == nil {
		return 0, false
	}
	switch v := e.Value.GetValue().(type) {
	case []int:
		if i < len(v) {
			return float64(v[i]), true
		}
	case []float64:
		if i < len(v) {
			return v[i], true
		}
	case []string:
		if i < len(v) {
			f, err := strconv.ParseFloat(strings.TrimSpace(v[i]), 64)
			return f, err == nil
		}
	}
	return 0, false
}

// int returns the first value of a numeric element as an integer.
func (h *header) int(t tag.Tag, def int) int {
	f, ok := h.num(t, 0)
	if !ok {
		return def
	}
	return int(f)
}

// imagePixel is the Image Pixel module of an instance.
type imagePixel struct {
	rows, cols    int
	samples       int
	bitsAllocated int
	bitsStored    int
	signed        bool
	planar        int
	photometric   string
	frames        int
	frameSize     int64
	bigEndian     bool
	slope         float64
	intercept     float64
	windowCenter  float64
	windowWidth   float64
	hasWindow     bool
	voiFunction   string
}

func (h *header) imagePixel() imagePixel {
	ip := imagePixel{
		rows:          h.int(tag.Rows, 0),
		cols:          h.int(tag.Columns, 0),
		samples:       h.int(tag.SamplesPerPixel, 1),
		bitsAllocated: h.int(tag.BitsAllocated, 16),
		planar:        h.int(tag.PlanarConfiguration, 0),
		photometric:   strings.ToUpper(h.str(tag.PhotometricInterpretation)),
		frames:        h.int(tag.NumberOfFrames, 1),
		signed:        h.int(tag.PixelRepresentation, 0) == 1,
		slope:         1,
		bigEndian:     h.ts == tsExplicitBE,
		voiFunction:   strings.ToUpper(h.str(tag.VOILUTFunction)),
	}
	ip.bitsStored = h.int(tag.BitsStored, ip.bitsAllocated)
	if ip.bitsStored <= 0 || ip.bitsStored > ip.bitsAllocated {
		ip.bitsStored = ip.bitsAllocated
	}
	if ip.frames < 1 {
		ip.frames = 1
	}
	if v, ok := h.num(tag.RescaleSlope, 0); ok && v != 0 {
		ip.slope = v
	}
	if v, ok := h.num(tag.RescaleIntercept, 0); ok {
		ip.intercept = v
	}
	c, okc := h.num(tag.WindowCenter, 0)
	w, okw := h.num(tag.WindowWidth, 0)
	if okc && okw && w > 0 {
		ip.windowCenter, ip.windowWidth, ip.hasWindow = c, w, true
	}
	bits := int64(ip.rows) * int64(ip.cols) * int64(ip.samples) * int64(ip.bitsAllocated)
	if bits%8 == 0 {
		ip.frameSize = bits / 8
	}
	return ip
}

// Interface guards
var _ io.Reader = (*countingReader)(nil)

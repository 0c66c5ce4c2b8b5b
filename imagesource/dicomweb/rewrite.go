package dicomweb

import (
	"bytes"
	"errors"
	"io"
	"strconv"
	"strings"
)

// errTruncated reports an upstream answer that ended before its syntax
// did: a multipart body without its close delimiter, or an object that
// ended before it could be checked. The PACS (or the connection) died
// mid-stream.
var errTruncated = errors.New("the PACS's answer ended early")

// bodyFilter is a streaming transformation of an upstream body. Close
// writes whatever was held back and reports an incomplete body.
type bodyFilter interface {
	io.Writer
	Close() error
}

// objectCheck decides whether a DICOM object may be passed on, from a
// prefix of it: ok once its header was read and it belongs to the
// request, an error when it does not or cannot be read, neither while more
// bytes are needed. complete says the prefix is the whole object.
type objectCheck func(prefix []byte, complete bool) (ok bool, err error)

// partialSuffix returns the length of the longest suffix of data that is a
// proper prefix of one of the needles (0 if none).
func partialSuffix(data []byte, needles [][]byte, maxLen int) int {
	k := maxLen - 1
	if k > len(data) {
		k = len(data)
	}
	for ; k > 0; k-- {
		s := data[len(data)-k:]
		for _, n := range needles {
			if len(n) > k && n[0] == s[0] && bytes.HasPrefix(n, s) {
				return k
			}
		}
	}
	return 0
}

// objectFilter passes one DICOM object (a single-part application/dicom
// answer) on once its header was checked; until then it holds the bytes.
type objectFilter struct {
	dst   io.Writer
	check objectCheck
	held  []byte
	ok    bool
}

func (f *objectFilter) Write(p []byte) (int, error) {
	if f.ok {
		return f.dst.Write(p)
	}
	f.held = append(f.held, p...)
	ok, err := f.check(f.held, false)
	if err != nil {
		return 0, err
	}
	if !ok {
		return len(p), nil
	}
	f.ok = true
	held := f.held
	f.held = nil
	if _, err := f.dst.Write(held); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (f *objectFilter) Close() error {
	if f.ok {
		return nil
	}
	ok, err := f.check(f.held, true)
	if err != nil {
		return err
	}
	if !ok {
		return errTruncated
	}
	f.ok = true
	_, err = f.dst.Write(f.held)
	f.held = nil
	return err
}

// multipart filter states.
const (
	mpStart       = iota // before the first delimiter
	mpBody               // in a preamble or a part's content
	mpAfterDelim         // just after a delimiter: "--" closes, else headers
	mpHeaders            // in a part's header block
	mpEpilogue           // after the close delimiter
	mpExpectDelim        // after a part's Content-Length bytes: the delimiter must follow
	mpCheck              // holding a part's start until its object is checked
)

// multipartFilter streams a multipart body. Part contents pass untouched
// (they are binary); in the part header blocks, URLs (Content-Location,
// Location) are mapped by uri onto the gateway or dropped. With check
// set, every part is a DICOM object: its header block and first bytes are
// held until check accepts them, and a refusal stops the stream. It
// reports a body whose close delimiter never arrives.
type multipartFilter struct {
	dst   io.Writer
	dash  []byte // "--" + boundary
	delim []byte // "\r\n--" + boundary
	uri   func(string) (string, bool)
	check objectCheck
	state int
	hold  []byte
	hdr   []byte
	buf   []byte
	out   []byte
	// partHdr is the filtered header block of the part being checked,
	// part its content so far; spare is part's other buffer (they swap
	// when a checked part is passed on, so neither is reallocated).
	partHdr, part, spare []byte
	closed               bool
	// skip is how many body bytes of the current part still pass on
	// unscanned: a part whose header gives its Content-Length is copied,
	// not searched for the boundary (pixel data is most of a study).
	skip int64
	// onPart is set by unwrapping: only the content of the body's single
	// part is written (no preamble, delimiters, part headers or
	// epilogue), and onPart gets that part's raw header block before its
	// first content byte is written (after its check, when there is one).
	// A second part, or none, is errNotOnePart.
	onPart func(hdr []byte)
	parts  int
}

func newMultipartFilter(dst io.Writer, boundary string, uri func(string) (string, bool), check objectCheck) *multipartFilter {
	return &multipartFilter{
		dst:   dst,
		dash:  []byte("--" + boundary),
		delim: []byte("\r\n--" + boundary),
		uri:   uri,
		check: check,
	}
}

// newUnwrapFilter is a multipartFilter that turns a multipart body of one
// part into that part's content: see multipartFilter.onPart.
func newUnwrapFilter(dst io.Writer, boundary string, check objectCheck, onPart func(hdr []byte)) *multipartFilter {
	f := newMultipartFilter(dst, boundary, nil, check)
	f.onPart = onPart
	return f
}

// errNotOnePart reports a multipart answer to a single-part request that
// holds several parts or none.
var errNotOnePart = errors.New("dicomweb: the PACS answered a request for one object or value with a number of parts other than one")

// frame appends multipart framing to the output, unless unwrapping.
func (f *multipartFilter) frame(b []byte) {
	if f.onPart == nil {
		f.out = append(f.out, b...)
	}
}

// content appends bytes of the body that are not framing: a preamble
// (before the first part) is dropped when unwrapping.
func (f *multipartFilter) content(b []byte) {
	if f.onPart == nil || f.parts > 0 {
		f.out = append(f.out, b...)
	}
}

func (f *multipartFilter) Write(p []byte) (int, error) {
	data := p
	if len(f.hold) > 0 {
		f.buf = append(append(f.buf[:0], f.hold...), p...)
		f.hold = f.hold[:0]
		data = f.buf
	}
	f.out = f.out[:0]
loop:
	for len(data) > 0 {
		if f.state == mpBody && f.skip > 0 {
			k := int(min(int64(len(data)), f.skip))
			if len(f.out) > 0 {
				if _, err := f.dst.Write(f.out); err != nil {
					return 0, err
				}
				f.out = f.out[:0]
			}
			if _, err := f.dst.Write(data[:k]); err != nil {
				return 0, err
			}
			f.skip -= int64(k)
			data = data[k:]
			if f.skip == 0 {
				f.state = mpExpectDelim
			}
			continue
		}
		switch f.state {
		case mpExpectDelim:
			if len(data) < len(f.delim) {
				if !bytes.HasPrefix(f.delim, data) {
					return 0, errPartLength
				}
				f.hold = append(f.hold, data...)
				data = nil
				break loop
			}
			if !bytes.HasPrefix(data, f.delim) {
				return 0, errPartLength
			}
			f.frame(f.delim)
			data = data[len(f.delim):]
			f.state = mpAfterDelim
		case mpStart:
			if len(data) < len(f.dash) && bytes.HasPrefix(f.dash, data) {
				f.hold = append(f.hold, data...)
				data = nil
				break loop
			}
			if bytes.HasPrefix(data, f.dash) {
				f.frame(f.dash)
				data = data[len(f.dash):]
				f.state = mpAfterDelim
			} else {
				f.state = mpBody
			}
		case mpBody:
			i := bytes.Index(data, f.delim)
			if i < 0 {
				k := partialSuffix(data, [][]byte{f.delim}, len(f.delim))
				f.content(data[:len(data)-k])
				f.hold = append(f.hold, data[len(data)-k:]...)
				data = nil
				break loop
			}
			f.content(data[:i])
			f.frame(f.delim)
			data = data[i+len(f.delim):]
			f.state = mpAfterDelim
		case mpAfterDelim:
			if len(data) < 2 {
				f.hold = append(f.hold, data...)
				data = nil
				break loop
			}
			if data[0] == '-' && data[1] == '-' {
				f.frame([]byte("--"))
				data = data[2:]
				f.closed = true
				f.state = mpEpilogue
			} else {
				f.hdr = nil
				f.state = mpHeaders
			}
		case mpHeaders:
			from := len(f.hdr) - 3
			if from < 0 {
				from = 0
			}
			f.hdr = append(f.hdr, data...)
			j := bytes.Index(f.hdr[from:], []byte("\r\n\r\n"))
			if j < 0 {
				if len(f.hdr) > maxPartHeader {
					return 0, errors.New("dicomweb: a multipart part header from the PACS is too large")
				}
				data = nil
				break loop
			}
			end := from + j + 4
			f.skip = partLength(f.hdr[:end])
			f.parts++
			if f.onPart != nil && f.parts > 1 {
				return 0, errNotOnePart
			}
			if f.check == nil {
				if f.onPart != nil {
					f.onPart(f.hdr[:end])
				} else {
					f.out = f.filterHeader(f.out, f.hdr[:end])
				}
				data = f.hdr[end:]
				f.state = mpBody
				continue
			}
			// Hold the part until its object is checked, with the framing
			// before it: a first part refused leaves nothing sent.
			if f.onPart != nil {
				f.partHdr = append(f.partHdr[:0], f.hdr[:end]...) // raw, for onPart
			} else {
				f.partHdr = f.filterHeader(append(f.partHdr[:0], f.out...), f.hdr[:end])
			}
			f.out = f.out[:0]
			f.part = append(f.part[:0], f.hdr[end:]...)
			data = nil
			f.state = mpCheck
			ok, err := f.checkPart()
			if err != nil {
				return 0, err
			}
			if ok {
				data = f.passPart()
			}
		case mpCheck:
			f.part = append(f.part, data...)
			data = nil
			ok, err := f.checkPart()
			if err != nil {
				return 0, err
			}
			if ok {
				data = f.passPart()
			}
		case mpEpilogue:
			f.frame(data)
			data = nil
		}
	}
	if len(f.out) > 0 {
		if _, err := f.dst.Write(f.out); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// checkPart runs the check on the held start of the current part: up to
// its Content-Length, or up to the delimiter when the part has none.
func (f *multipartFilter) checkPart() (bool, error) {
	avail, complete := f.part, false
	if f.skip > 0 {
		if int64(len(avail)) >= f.skip {
			avail, complete = avail[:f.skip], true
		}
	} else if i := bytes.Index(avail, f.delim); i >= 0 {
		avail, complete = avail[:i], true
	} else {
		avail = avail[:len(avail)-partialSuffix(avail, [][]byte{f.delim}, len(f.delim))]
	}
	return f.check(avail, complete)
}

// passPart releases a checked part: its header block goes out and its
// held bytes are returned to be streamed as the part's content.
func (f *multipartFilter) passPart() []byte {
	if f.onPart != nil {
		f.onPart(f.partHdr)
	} else {
		f.out = append(f.out, f.partHdr...)
	}
	held := f.part
	f.part, f.spare = f.spare[:0], held
	f.state = mpBody
	return held
}

// filterHeader appends the header block hdr to dst, with each
// Content-Location or Location mapped by f.uri, or dropped (with any
// folded continuation lines) when it does not map.
func (f *multipartFilter) filterHeader(dst, hdr []byte) []byte {
	dropping := false
	for len(hdr) > 0 {
		line := hdr
		if i := bytes.Index(hdr, []byte("\r\n")); i >= 0 {
			line, hdr = hdr[:i+2], hdr[i+2:]
		} else {
			hdr = nil
		}
		if len(line) > 2 && (line[0] == ' ' || line[0] == '\t') {
			if !dropping {
				dst = append(dst, line...)
			}
			continue
		}
		dropping = false
		name, value, ok := bytes.Cut(line, []byte(":"))
		if ok {
			switch n := strings.TrimSpace(string(name)); {
			case strings.EqualFold(n, "Content-Location"), strings.EqualFold(n, "Location"):
				dropping = true
				if u, ok := f.uri(strings.TrimSpace(string(value))); ok {
					dst = append(dst, n...)
					dst = append(dst, ": "...)
					dst = append(dst, u...)
					dst = append(dst, "\r\n"...)
				}
				continue
			}
		}
		dst = append(dst, line...)
	}
	return dst
}

// Close writes what was held back of the framing and reports a body that
// never reached its close delimiter. A part still held for its check is
// not written: it was never checked.
func (f *multipartFilter) Close() error {
	if len(f.hold) > 0 && f.state != mpCheck && f.onPart == nil {
		if _, err := f.dst.Write(f.hold); err != nil {
			return err
		}
	}
	f.hold, f.hdr, f.part, f.spare = nil, nil, nil, nil
	if !f.closed {
		return errTruncated
	}
	if f.onPart != nil && f.parts != 1 {
		return errNotOnePart
	}
	return nil
}

// maxPartHeader bounds the header block of one multipart part.
const maxPartHeader = 64 << 10

// errPartLength reports a part whose bytes do not end where its
// Content-Length says: the stream is aborted rather than passing the rest
// on unchecked.
var errPartLength = errors.New("dicomweb: a multipart part from the PACS does not match its Content-Length")

// partLength is the Content-Length of a part header block, 0 when absent
// or invalid (the body is then scanned for the delimiter).
func partLength(hdr []byte) int64 {
	for _, line := range bytes.Split(hdr, []byte("\r\n")) {
		name, val, ok := bytes.Cut(line, []byte(":"))
		if !ok || !bytes.EqualFold(bytes.TrimSpace(name), []byte("Content-Length")) {
			continue
		}
		n, err := strconv.ParseInt(string(bytes.TrimSpace(val)), 10, 64)
		if err != nil || n < 0 {
			return 0
		}
		return n
	}
	return 0
}

// Interface guards
var (
	_ bodyFilter = (*multipartFilter)(nil)
)

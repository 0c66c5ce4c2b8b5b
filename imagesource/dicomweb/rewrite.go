package dicomweb

import (
	"bytes"
	"errors"
	"io"
	"strconv"
)

// errTruncated reports an upstream answer that ended before its syntax
// did: a multipart body without its close delimiter or a JSON body with
// open brackets. The PACS (or the connection) died mid-stream.
var errTruncated = errors.New("the PACS's answer ended early")

// bodyFilter is a streaming transformation of an upstream body. Close
// writes whatever was held back and reports an incomplete body.
type bodyFilter interface {
	io.Writer
	Close() error
}

// replacer copies to dst, replacing every occurrence of any of the needles
// with repl, in a stream: a needle split across Write calls is still found.
// It holds back at most the longest needle's length minus one byte.
type replacer struct {
	dst     io.Writer
	needles [][]byte
	repl    []byte
	maxLen  int
	hold    []byte // tail of the input that may start a needle
	buf     []byte // hold + current input
	out     []byte // output of one Write
	next    []int  // per needle: index of its next match in buf, -1 none, -2 unknown
}

func newReplacer(dst io.Writer, needles []string, repl string) *replacer {
	r := &replacer{dst: dst, repl: []byte(repl)}
	for _, n := range needles {
		if n == "" {
			continue
		}
		r.needles = append(r.needles, []byte(n))
		if len(n) > r.maxLen {
			r.maxLen = len(n)
		}
	}
	r.next = make([]int, len(r.needles))
	return r
}

// Write replaces in p (with the held-back tail in front) and writes the
// part that cannot start a needle anymore.
func (r *replacer) Write(p []byte) (int, error) {
	r.buf = append(append(r.buf[:0], r.hold...), p...)
	r.hold = r.hold[:0]
	r.out = r.out[:0]
	data := r.buf
	for i := range r.next {
		r.next[i] = -2
	}
	pos := 0
	for {
		best, bestLen := -1, 0
		for i, n := range r.needles {
			if r.next[i] == -2 || (r.next[i] >= 0 && r.next[i] < pos) {
				j := bytes.Index(data[pos:], n)
				if j >= 0 {
					j += pos
				}
				r.next[i] = j
			}
			if j := r.next[i]; j >= 0 && (best < 0 || j < best || j == best && len(n) > bestLen) {
				best, bestLen = j, len(n)
			}
		}
		if best < 0 {
			break
		}
		r.out = append(r.out, data[pos:best]...)
		r.out = append(r.out, r.repl...)
		pos = best + bestLen
	}
	rest := data[pos:]
	k := partialSuffix(rest, r.needles, r.maxLen)
	r.out = append(r.out, rest[:len(rest)-k]...)
	r.hold = append(r.hold, rest[len(rest)-k:]...)
	if len(r.out) > 0 {
		if _, err := r.dst.Write(r.out); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// Close writes the held-back tail.
func (r *replacer) Close() error {
	if len(r.hold) == 0 {
		return nil
	}
	_, err := r.dst.Write(r.hold)
	r.hold = r.hold[:0]
	return err
}

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

// replaceAll replaces every needle in b (not streaming).
func replaceAll(b []byte, needles []string, repl string) []byte {
	var out bytes.Buffer
	r := newReplacer(&out, needles, repl)
	r.Write(b)
	r.Close()
	return out.Bytes()
}

// jsonFilter rewrites URLs in a JSON body and checks, without parsing it,
// that the body is complete: every bracket closed, no string left open.
type jsonFilter struct {
	rep     *replacer
	depth   int
	inStr   bool
	esc     bool
	started bool
	broken  bool
}

func newJSONFilter(dst io.Writer, needles []string, repl string) *jsonFilter {
	return &jsonFilter{rep: newReplacer(dst, needles, repl)}
}

func (f *jsonFilter) Write(p []byte) (int, error) {
	for _, c := range p {
		if f.inStr {
			switch {
			case f.esc:
				f.esc = false
			case c == '\\':
				f.esc = true
			case c == '"':
				f.inStr = false
			}
			continue
		}
		switch c {
		case '"':
			f.inStr, f.started = true, true
		case '[', '{':
			f.depth++
			f.started = true
		case ']', '}':
			f.depth--
			if f.depth < 0 {
				f.broken = true
			}
		case ' ', '\t', '\r', '\n':
		default:
			f.started = true
		}
	}
	return f.rep.Write(p)
}

func (f *jsonFilter) Close() error {
	if err := f.rep.Close(); err != nil {
		return err
	}
	if !f.started || f.inStr || f.depth != 0 || f.broken {
		return errTruncated
	}
	return nil
}

// maxPartHeader bounds the header block of one multipart part.
const maxPartHeader = 64 << 10

// multipart filter states.
const (
	mpStart       = iota // before the first delimiter
	mpBody               // in a preamble or a part's content
	mpAfterDelim         // just after a delimiter: "--" closes, else headers
	mpHeaders            // in a part's header block
	mpEpilogue           // after the close delimiter
	mpExpectDelim        // after a part's Content-Length bytes: the delimiter must follow
)

// multipartFilter streams a multipart body, rewriting URLs in the part
// header blocks only (Content-Location of frames; part contents are
// binary and pass untouched), and checks that the close delimiter arrives.
type multipartFilter struct {
	dst     io.Writer
	dash    []byte // "--" + boundary
	delim   []byte // "\r\n--" + boundary
	needles []string
	repl    string
	state   int
	hold    []byte
	hdr     []byte
	buf     []byte
	out     []byte
	closed  bool
	// skip is how many body bytes of the current part still pass on
	// unscanned: a part whose header gives its Content-Length is copied,
	// not searched for the boundary (pixel data is most of a study).
	skip int64
}

func newMultipartFilter(dst io.Writer, boundary string, needles []string, repl string) *multipartFilter {
	return &multipartFilter{
		dst:     dst,
		dash:    []byte("--" + boundary),
		delim:   []byte("\r\n--" + boundary),
		needles: needles,
		repl:    repl,
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
			f.out = append(f.out, f.delim...)
			data = data[len(f.delim):]
			f.state = mpAfterDelim
		case mpStart:
			if len(data) < len(f.dash) && bytes.HasPrefix(f.dash, data) {
				f.hold = append(f.hold, data...)
				data = nil
				break loop
			}
			if bytes.HasPrefix(data, f.dash) {
				f.out = append(f.out, f.dash...)
				data = data[len(f.dash):]
				f.state = mpAfterDelim
			} else {
				f.state = mpBody
			}
		case mpBody:
			i := bytes.Index(data, f.delim)
			if i < 0 {
				k := partialSuffix(data, [][]byte{f.delim}, len(f.delim))
				f.out = append(f.out, data[:len(data)-k]...)
				f.hold = append(f.hold, data[len(data)-k:]...)
				data = nil
				break loop
			}
			f.out = append(f.out, data[:i+len(f.delim)]...)
			data = data[i+len(f.delim):]
			f.state = mpAfterDelim
		case mpAfterDelim:
			if len(data) < 2 {
				f.hold = append(f.hold, data...)
				data = nil
				break loop
			}
			if data[0] == '-' && data[1] == '-' {
				f.out = append(f.out, '-', '-')
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
			f.out = append(f.out, replaceAll(f.hdr[:end], f.needles, f.repl)...)
			data = f.hdr[end:]
			f.hdr = nil
			f.state = mpBody
		case mpEpilogue:
			f.out = append(f.out, data...)
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

// Close writes what was held back and reports a body that never reached
// its close delimiter.
func (f *multipartFilter) Close() error {
	rest := append(f.hold, f.hdr...)
	f.hold, f.hdr = nil, nil
	if len(rest) > 0 {
		if _, err := f.dst.Write(rest); err != nil {
			return err
		}
	}
	if !f.closed {
		return errTruncated
	}
	return nil
}

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
	_ bodyFilter = (*replacer)(nil)
	_ bodyFilter = (*jsonFilter)(nil)
	_ bodyFilter = (*multipartFilter)(nil)
)

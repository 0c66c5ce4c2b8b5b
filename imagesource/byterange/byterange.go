// Package byterange makes any source's single-part answers honour a
// Range request (RFC 9110 §14): a download of a large instance or bulk
// data value can resume where it broke. It works on the answer's bytes as
// the source writes them, so every source (a folder, a proxied PACS, a
// DIMSE cache) gets it without knowing of it.
//
// Only one range is served; multipart answers, answers without a
// Content-Length, several ranges and If-Range are answered in full (which
// RFC 9110 allows). Bytes before the range are read and dropped, never
// buffered: memory stays flat whatever the offset.
package byterange

import (
	"net/http"
	"strconv"
	"strings"
)

// Wrap returns the writer a source should write a retrieve's answer to.
// Single-part 200 answers with a Content-Length advertise
// Accept-Ranges: bytes and, when r asks for one satisfiable range, become
// 206 with that range; an unsatisfiable one is 416.
func Wrap(w http.ResponseWriter, r *http.Request) http.ResponseWriter {
	bw := &writer{ResponseWriter: w, head: r.Method == http.MethodHead}
	if r.Method == http.MethodGet && r.Header.Get("If-Range") == "" {
		bw.spec, bw.asked = parse(r.Header.Values("Range"))
	}
	return bw
}

// spec is one byte range: first-last (last < 0: to the end), or the last
// suffix bytes when suffix > 0.
type spec struct {
	first, last, suffix int64
}

// parse reads a single "bytes=" range; ok is false for none, several, or
// a malformed one (the header is then ignored).
func parse(vs []string) (spec, bool) {
	if len(vs) != 1 {
		return spec{}, false
	}
	v, found := strings.CutPrefix(strings.TrimSpace(vs[0]), "bytes=")
	if !found || strings.Contains(v, ",") {
		return spec{}, false
	}
	a, b, found := strings.Cut(strings.TrimSpace(v), "-")
	if !found {
		return spec{}, false
	}
	num := func(s string) (int64, bool) {
		if s == "" || len(s) > 18 || strings.IndexFunc(s, func(c rune) bool { return c < '0' || c > '9' }) >= 0 {
			return 0, false
		}
		n, err := strconv.ParseInt(s, 10, 64)
		return n, err == nil
	}
	if a == "" {
		n, ok := num(b)
		if !ok || n == 0 {
			return spec{}, false
		}
		return spec{suffix: n, last: -1}, true
	}
	first, ok := num(a)
	if !ok {
		return spec{}, false
	}
	if b == "" {
		return spec{first: first, last: -1}, true
	}
	last, ok := num(b)
	if !ok || last < first {
		return spec{}, false
	}
	return spec{first: first, last: last}, true
}

type writer struct {
	http.ResponseWriter
	spec  spec
	asked bool
	head  bool

	decided bool
	ranged  bool  // serving a range: drop bytes outside [from, to]
	drop    bool  // answering 416: drop the body
	pos     int64 // bytes of the full answer seen so far
	from    int64
	to      int64 // inclusive
}

func (w *writer) WriteHeader(code int) {
	if w.decided {
		w.ResponseWriter.WriteHeader(code)
		return
	}
	w.decided = true
	h := w.Header()
	size, err := strconv.ParseInt(h.Get("Content-Length"), 10, 64)
	if code != http.StatusOK || err != nil || size < 0 || strings.HasPrefix(strings.ToLower(h.Get("Content-Type")), "multipart/") ||
		h.Get("Content-Encoding") != "" {
		w.ResponseWriter.WriteHeader(code)
		return
	}
	h.Set("Accept-Ranges", "bytes")
	if !w.asked {
		w.ResponseWriter.WriteHeader(code)
		return
	}
	from, to := w.spec.first, w.spec.last
	if w.spec.suffix > 0 {
		from, to = max(size-w.spec.suffix, 0), size-1
	}
	if to < 0 || to >= size {
		to = size - 1
	}
	if from >= size {
		h.Set("Content-Range", "bytes */"+strconv.FormatInt(size, 10))
		h.Del("Content-Length")
		h.Set("Content-Type", "text/plain; charset=utf-8")
		w.drop = true
		w.ResponseWriter.WriteHeader(http.StatusRequestedRangeNotSatisfiable)
		return
	}
	w.ranged, w.from, w.to = true, from, to
	h.Set("Content-Range", "bytes "+strconv.FormatInt(from, 10)+"-"+strconv.FormatInt(to, 10)+"/"+strconv.FormatInt(size, 10))
	h.Set("Content-Length", strconv.FormatInt(to-from+1, 10))
	w.ResponseWriter.WriteHeader(http.StatusPartialContent)
}

func (w *writer) Write(p []byte) (int, error) {
	if !w.decided {
		w.WriteHeader(http.StatusOK)
	}
	if w.drop {
		return len(p), nil
	}
	if !w.ranged {
		return w.ResponseWriter.Write(p)
	}
	n := int64(len(p))
	start, end := w.pos, w.pos+n // this chunk covers [start, end)
	w.pos = end
	lo, hi := max(start, w.from), min(end, w.to+1)
	if lo < hi && !w.head {
		if _, err := w.ResponseWriter.Write(p[lo-start : hi-start]); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// Unwrap lets http.ResponseController reach the underlying writer (to
// flush).
func (w *writer) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Interface guard.
var _ http.ResponseWriter = (*writer)(nil)

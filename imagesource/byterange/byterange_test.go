package byterange

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
)

// serve writes body in chunks of 3 bytes through Wrap, as a source would.
func serve(rangeHdr, ctype string, withLength bool, body string) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	if rangeHdr != "" {
		r.Header.Set("Range", rangeHdr)
	}
	w := Wrap(rec, r)
	w.Header().Set("Content-Type", ctype)
	if withLength {
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	}
	w.WriteHeader(http.StatusOK)
	for i := 0; i < len(body); i += 3 {
		io.WriteString(w, body[i:min(i+3, len(body))])
	}
	return rec
}

func TestRanges(t *testing.T) {
	const body = "0123456789abcdefghij"
	cases := []struct {
		rng, ctype string
		length     bool
		status     int
		want, cr   string
	}{
		{"", "application/dicom", true, 200, body, ""},
		{"bytes=0-4", "application/dicom", true, 206, "01234", "bytes 0-4/20"},
		{"bytes=4-10", "application/octet-stream", true, 206, "456789a", "bytes 4-10/20"},
		{"bytes=15-", "application/dicom", true, 206, "fghij", "bytes 15-19/20"},
		{"bytes=-3", "application/dicom", true, 206, "hij", "bytes 17-19/20"},
		{"bytes=-30", "application/dicom", true, 206, body, "bytes 0-19/20"},
		{"bytes=18-100", "application/dicom", true, 206, "ij", "bytes 18-19/20"},
		{"bytes=20-", "application/dicom", true, 416, "", "bytes */20"},
		{"bytes=0-1,4-5", "application/dicom", true, 200, body, ""},
		{"bytes=5-2", "application/dicom", true, 200, body, ""},
		{"items=0-1", "application/dicom", true, 200, body, ""},
		{"bytes=0-4", "multipart/related; boundary=x", true, 200, body, ""},
		{"bytes=0-4", "application/dicom", false, 200, body, ""},
	}
	for _, c := range cases {
		rec := serve(c.rng, c.ctype, c.length, body)
		if rec.Code != c.status || rec.Body.String() != c.want || rec.Header().Get("Content-Range") != c.cr {
			t.Errorf("%q %s: %d %q %q; want %d %q %q", c.rng, c.ctype, rec.Code, rec.Body.String(), rec.Header().Get("Content-Range"), c.status, c.want, c.cr)
		}
		if c.status == 206 && rec.Header().Get("Content-Length") != strconv.Itoa(len(c.want)) {
			t.Errorf("%q: Content-Length %s", c.rng, rec.Header().Get("Content-Length"))
		}
	}
	if rec := serve("", "application/dicom", true, body); rec.Header().Get("Accept-Ranges") != "bytes" {
		t.Error("single-part answers advertise Accept-Ranges")
	}
}

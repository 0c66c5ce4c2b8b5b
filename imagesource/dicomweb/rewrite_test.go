package dicomweb

import (
	"bytes"
	"errors"
	"strconv"
	"strings"
	"testing"
)

// writeSplit writes in to w in chunks cut at the given positions.
func writeSplit(t *testing.T, w interface{ Write([]byte) (int, error) }, in string, cuts ...int) {
	t.Helper()
	prev := 0
	for _, c := range append(cuts, len(in)) {
		n, err := w.Write([]byte(in[prev:c]))
		if err != nil || n != c-prev {
			t.Fatalf("Write(%q) = %d, %v", in[prev:c], n, err)
		}
		prev = c
	}
}

// prefixURI maps URLs under needles onto repl, and drops the others, as
// proxyWriter.publicURL does for absolute URLs.
func prefixURI(needles []string, repl string) func(string) (string, bool) {
	return func(v string) (string, bool) {
		for _, n := range needles {
			if strings.HasPrefix(v, n) {
				return repl + v[len(n):], true
			}
		}
		return "", false
	}
}

const testBoundary = "b0UnDaRy-1234"

func part(headers, content string) string {
	return "--" + testBoundary + "\r\n" + headers + "\r\n\r\n" + content + "\r\n"
}

func TestMultipartFilterEverySplit(t *testing.T) {
	needles := []string{"http://127.0.0.1:18042/dicom-web/"}
	const repl = "https://gw/wado/T/"
	// The binary content holds the needle: it must not be touched.
	content := "\x00\x01http://127.0.0.1:18042/dicom-web/\r\n--not-the-boundary\xff"
	body := "preamble\r\n" +
		part("Content-Type: application/octet-stream\r\nContent-Location: http://127.0.0.1:18042/dicom-web/studies/1/frames/1\r\nContent-Length: "+strconv.Itoa(len(content)), content) +
		part("Content-Location: http://127.0.0.1:18042/dicom-web/studies/1/frames/2", content) +
		"--" + testBoundary + "--\r\nepilogue"
	want := strings.ReplaceAll(body, "Content-Location: http://127.0.0.1:18042/dicom-web/", "Content-Location: "+repl)
	if strings.Count(want, repl) != 2 {
		t.Fatal("bad test data")
	}
	bodies := []string{body, strings.TrimPrefix(body, "preamble\r\n")}
	wants := []string{want, strings.TrimPrefix(want, "preamble\r\n")}
	for k, in := range bodies {
		for i := 0; i <= len(in); i++ {
			for _, j := range []int{i, (i + len(in)) / 2, len(in)} {
				var out bytes.Buffer
				f := newMultipartFilter(&out, testBoundary, prefixURI(needles, repl), nil)
				writeSplit(t, f, in, i, j)
				if err := f.Close(); err != nil {
					t.Fatalf("cut %d,%d: Close: %v", i, j, err)
				}
				if out.String() != wants[k] {
					t.Fatalf("cut %d,%d:\n got %q\nwant %q", i, j, out.String(), wants[k])
				}
			}
		}
	}
}

func TestMultipartFilterReportsMissingCloseDelimiter(t *testing.T) {
	body := part("Content-Type: application/dicom", "DICM....") + "--" + testBoundary + "--\r\n"
	closeAt := strings.LastIndex(body, "--"+testBoundary+"--") + len("--"+testBoundary+"--")
	for n := 0; n <= len(body); n++ {
		var out bytes.Buffer
		f := newMultipartFilter(&out, testBoundary, prefixURI(nil, ""), nil)
		f.Write([]byte(body[:n]))
		err := f.Close()
		complete := n >= closeAt
		if complete && err != nil {
			t.Errorf("body of %d bytes (complete): Close = %v", n, err)
		}
		if !complete && !errors.Is(err, errTruncated) {
			t.Errorf("body cut at %d of %d bytes: Close = %v, want errTruncated", n, len(body), err)
		}
		// What went out is what came in, but for a part header block
		// that never ended (it is held back, never checked).
		if got := out.String(); !strings.HasPrefix(body[:n], got) || len(body[:n])-len(got) > len("\r\nContent-Type: application/dicom\r\n\r") {
			t.Errorf("cut at %d: passed on %q of %q", n, got, body[:n])
		}
	}
}

func TestJSONString(t *testing.T) {
	if got := jsonString(`https://gw/a<b>"c`); got != `https://gw/a<b>\"c` {
		t.Errorf("jsonString = %q", got)
	}
}

// A part whose Content-Length overstates its bytes would let the next
// part's headers through unrewritten: the filter aborts instead.
func TestMultipartFilterPartLengthMismatch(t *testing.T) {
	needles := []string{"http://127.0.0.1:18042/dicom-web/"}
	for _, n := range []int{3, 20} {
		content := "0123456789"
		body := part("Content-Length: "+strconv.Itoa(n), content) +
			part("Content-Location: http://127.0.0.1:18042/dicom-web/studies/1", content) +
			"--" + testBoundary + "--\r\n"
		var out bytes.Buffer
		f := newMultipartFilter(&out, testBoundary, prefixURI(needles, "https://gw/"), nil)
		_, err := f.Write([]byte(body))
		if err == nil {
			err = f.Close()
		}
		if err == nil {
			t.Errorf("Content-Length %d for %d bytes: no error", n, len(content))
		}
		if strings.Contains(out.String(), "127.0.0.1:18042") {
			t.Errorf("Content-Length %d: the PACS URL went through: %q", n, out.String())
		}
	}
}

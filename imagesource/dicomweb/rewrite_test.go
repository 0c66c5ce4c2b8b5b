package dicomweb

import (
	"bytes"
	"errors"
	"strconv"
	"strings"
	"testing"
)

// refReplace is the obvious non-streaming replacement: at each position the
// longest needle that starts there is replaced, left to right.
func refReplace(s string, needles []string, repl string) string {
	var b strings.Builder
	for i := 0; i < len(s); {
		best := ""
		for _, n := range needles {
			if strings.HasPrefix(s[i:], n) && len(n) > len(best) {
				best = n
			}
		}
		if best != "" {
			b.WriteString(repl)
			i += len(best)
			continue
		}
		b.WriteByte(s[i])
		i++
	}
	return b.String()
}

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

func TestReplacerEverySplit(t *testing.T) {
	needles := []string{"http://127.0.0.1:18042/dicom-web/", "https://127.0.0.1:18042/dicom-web/"}
	const repl = "https://gw.example/wado/TOKEN/"
	inputs := []string{
		"",
		"http://127.0.0.1:18042/dicom-web/",
		`{"BulkDataURI":"http://127.0.0.1:18042/dicom-web/studies/1/bulk/7fe00010"}`,
		`["https://127.0.0.1:18042/dicom-web/studies/1","http://127.0.0.1:18042/dicom-web/studies/2"]`,
		// Near misses must pass untouched.
		`"http://127.0.0.1:18042/dicom-webX/" "http://127.0.0.1:18043/dicom-web/" "http://127.0.0.1:18042/dicom-web"`,
		// A near miss right before a hit, and back-to-back hits.
		"http://127.0.0.1:18042/dicom-http://127.0.0.1:18042/dicom-web/x" +
			"http://127.0.0.1:18042/dicom-web/http://127.0.0.1:18042/dicom-web/",
		"hhttp://127.0.0.1:18042/dicom-web/h",
		"ends with a prefix http://127.0.0.1:18042/dic",
	}
	for _, in := range inputs {
		want := refReplace(in, needles, repl)
		// One cut at every position (the needle split across every
		// possible chunk boundary), and two cuts at every pair.
		for i := 0; i <= len(in); i++ {
			for j := i; j <= len(in); j++ {
				var out bytes.Buffer
				r := newReplacer(&out, needles, repl)
				writeSplit(t, r, in, i, j)
				if err := r.Close(); err != nil {
					t.Fatal(err)
				}
				if got := out.String(); got != want {
					t.Fatalf("input %q cut at %d,%d:\n got %q\nwant %q", in, i, j, got, want)
				}
			}
		}
		// One byte at a time.
		var out bytes.Buffer
		r := newReplacer(&out, needles, repl)
		for k := 0; k < len(in); k++ {
			r.Write([]byte{in[k]})
		}
		r.Close()
		if out.String() != want {
			t.Fatalf("input %q byte by byte: got %q want %q", in, out.String(), want)
		}
	}
}

func TestReplacerHoldsBackOnlyAPossibleNeedleStart(t *testing.T) {
	var out bytes.Buffer
	r := newReplacer(&out, []string{"http://pacs/dicom-web/"}, "X/")
	r.Write([]byte("0123456789 http://pa"))
	if got := out.String(); got != "0123456789 " {
		t.Fatalf("written before the needle could complete: %q, want %q", got, "0123456789 ")
	}
	r.Write([]byte("ss-through."))
	if got := out.String(); got != "0123456789 http://pass-through." {
		t.Fatalf("after a near miss: %q", got)
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
				f := newMultipartFilter(&out, testBoundary, needles, repl)
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
		f := newMultipartFilter(&out, testBoundary, nil, "")
		f.Write([]byte(body[:n]))
		err := f.Close()
		complete := n >= closeAt
		if complete && err != nil {
			t.Errorf("body of %d bytes (complete): Close = %v", n, err)
		}
		if !complete && !errors.Is(err, errTruncated) {
			t.Errorf("body cut at %d of %d bytes: Close = %v, want errTruncated", n, len(body), err)
		}
		if out.String() != body[:n] {
			t.Errorf("cut at %d: the bytes were not passed on unchanged", n)
		}
	}
}

func TestJSONFilterReportsTruncation(t *testing.T) {
	body := `[{"00081190":{"vr":"UR","Value":["http://pacs/dicom-web/studies/1"]},"x":"a\"]}"}]` + "\n"
	for n := 0; n <= len(body); n++ {
		var out bytes.Buffer
		f := newJSONFilter(&out, []string{"http://pacs/dicom-web/"}, "https://gw/w/T/")
		f.Write([]byte(body[:n]))
		err := f.Close()
		complete := n >= len(body)-1
		if complete != (err == nil) {
			t.Errorf("JSON cut at %d of %d: Close = %v, complete = %v", n, len(body), err, complete)
		}
	}
	var out bytes.Buffer
	f := newJSONFilter(&out, []string{"http://pacs/dicom-web/"}, "https://gw/w/T/")
	f.Write([]byte(body))
	f.Close()
	if !strings.Contains(out.String(), `"https://gw/w/T/studies/1"`) || strings.Contains(out.String(), "pacs") {
		t.Errorf("URL not rewritten: %s", out.String())
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
		f := newMultipartFilter(&out, testBoundary, needles, "https://gw/")
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

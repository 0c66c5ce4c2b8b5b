package folder

import (
	"net/http"
	"sort"
	"strconv"
	"strings"

	"github.com/smart-imaging/smart_imaging/imagesource"
	"github.com/smart-imaging/smart_imaging/imagesource/wadopath"
)

// mediaRange is one entry of an Accept header.
type mediaRange struct {
	typ    string            // lower-case "type/subtype"
	params map[string]string // lower-case names, unquoted values
	q      float64
}

// param returns a parameter value; "type" is lower-cased.
func (m mediaRange) param(name string) string {
	v := m.params[name]
	if name == "type" {
		v = strings.ToLower(v)
	}
	return v
}

// parseAccept reads every Accept header of r into media ranges, best (by q,
// then by position) first, leaving out q=0. No Accept header means */*.
// Parameter values may be quoted or not: "type=application/dicom" is not a
// valid token but clients send it.
func parseAccept(r *http.Request) []mediaRange {
	var out []mediaRange
	for _, h := range r.Header.Values("Accept") {
		for _, item := range splitOutsideQuotes(h, ',') {
			parts := splitOutsideQuotes(item, ';')
			typ := strings.ToLower(strings.TrimSpace(parts[0]))
			if typ == "" {
				continue
			}
			m := mediaRange{typ: typ, params: map[string]string{}, q: 1}
			for _, p := range parts[1:] {
				name, value, _ := strings.Cut(p, "=")
				name = strings.ToLower(strings.TrimSpace(name))
				value = unquote(strings.TrimSpace(value))
				if name == "q" {
					if q, err := strconv.ParseFloat(value, 64); err == nil && q >= 0 && q <= 1 {
						m.q = q
					}
					continue
				}
				if name != "" {
					m.params[name] = value
				}
			}
			if m.q > 0 {
				out = append(out, m)
			}
		}
	}
	if len(out) == 0 && len(strings.TrimSpace(strings.Join(r.Header.Values("Accept"), ""))) == 0 {
		out = append(out, mediaRange{typ: "*/*", params: map[string]string{}, q: 1})
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].q > out[j].q })
	return out
}

func splitOutsideQuotes(s string, sep byte) []string {
	var out []string
	inQuote, escaped, start := false, false, 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case escaped:
			escaped = false
		case inQuote && c == '\\':
			escaped = true
		case c == '"':
			inQuote = !inQuote
		case !inQuote && c == sep:
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return append(out, s[start:])
}

func unquote(s string) string {
	if len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' {
		s = s[1 : len(s)-1]
		var b strings.Builder
		for i := 0; i < len(s); i++ {
			if s[i] == '\\' && i+1 < len(s) {
				i++
			}
			b.WriteByte(s[i])
		}
		return b.String()
	}
	return s
}

func notAcceptable(format string, args ...any) *imagesource.Error {
	return imagesource.Errorf(http.StatusNotAcceptable, "not-supported", format, args...)
}

// objectChoice is the negotiated form of a DICOM object answer.
type objectChoice struct {
	// single is a bare application/dicom body (one instance only).
	single bool
}

// negotiateObjects picks the answer for a study, series or instance
// retrieve. files holds the transfer syntaxes of the files to send; each
// must satisfy the range's transfer-syntax parameter (absent or "*" means
// as stored), since the source does not transcode.
func negotiateObjects(ranges []mediaRange, level wadopath.Level, files []string) (objectChoice, error) {
	tsRefused := ""
	for _, m := range ranges {
		var c objectChoice
		ts := m.param("transfer-syntax")
		switch m.typ {
		case "*/*", "multipart/*":
		case "multipart/related":
			switch m.param("type") {
			case "", "application/dicom", "*/*", "application/*":
			default:
				continue
			}
		case "application/dicom", "application/*":
			if level != wadopath.Instance {
				continue
			}
			c.single = true
		default:
			continue
		}
		if ts != "" && ts != "*" {
			ok := true
			for _, f := range files {
				if f != ts {
					ok = false
					break
				}
			}
			if !ok {
				tsRefused = ts
				continue
			}
		}
		return c, nil
	}
	if tsRefused != "" {
		return objectChoice{}, notAcceptable("the requested objects are not stored in transfer syntax %s and this image source does not transcode; ask for transfer-syntax=* or leave it out", tsRefused)
	}
	if level == wadopath.Instance {
		return objectChoice{}, notAcceptable(`DICOM objects are served as multipart/related; type="application/dicom" or application/dicom`)
	}
	return objectChoice{}, notAcceptable(`studies and series are served only as multipart/related; type="application/dicom"`)
}

// negotiateOctets picks the answer for frames and bulk data: raw native
// little-endian bytes. single reports that the client accepts a bare
// application/octet-stream body, allowed when one value is asked for.
func negotiateOctets(ranges []mediaRange, oneValue bool) (single bool, err error) {
	for _, m := range ranges {
		switch m.typ {
		case "*/*", "multipart/*":
			return false, nil
		case "multipart/related":
			switch m.param("type") {
			case "", "application/octet-stream", "*/*", "application/*":
			default:
				continue
			}
		case "application/octet-stream", "application/*":
			if !oneValue {
				continue
			}
			single = true
		default:
			continue
		}
		switch m.param("transfer-syntax") {
		case "", "*", tsExplicitLE, tsImplicitLE:
			return single, nil
		}
		single = false
	}
	return false, notAcceptable(`frames and bulk data are served only as multipart/related; type="application/octet-stream" in native little-endian form (transfer-syntax=%s); this image source does not transcode`, tsExplicitLE)
}

// negotiateJSON picks the media type of a metadata answer.
func negotiateJSON(ranges []mediaRange) (string, error) {
	for _, m := range ranges {
		switch m.typ {
		case "application/dicom+json", "application/*", "*/*":
			return "application/dicom+json", nil
		case "application/json":
			return "application/json", nil
		}
	}
	return "", notAcceptable("metadata is served only as application/dicom+json")
}

// negotiateImage picks the media type of a rendered or thumbnail answer.
func negotiateImage(ranges []mediaRange) (string, error) {
	for _, m := range ranges {
		switch m.typ {
		case "image/jpeg", "image/png":
			return m.typ, nil
		case "image/*", "*/*":
			return "image/jpeg", nil
		}
	}
	return "", notAcceptable("rendered images are served only as image/jpeg or image/png")
}

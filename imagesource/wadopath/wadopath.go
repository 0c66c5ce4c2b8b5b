// Package wadopath parses the DICOMweb WADO-RS paths the gateway lets
// through. It is an allow-list: studies/{uid}[/series/{uid}[/instances/{uid}]]
// with an optional metadata, rendered, thumbnail, frames/{n,…} (each frame at
// most once) or bulkdata suffix, UIDs that follow the DICOM UID grammar,
// nothing else. Anything that does not parse is refused before it can reach
// a PACS.
package wadopath

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Level is the hierarchy level a path addresses.
type Level int

// The levels of the DICOM hierarchy.
const (
	Study Level = iota + 1
	Series
	Instance
	Frame
)

// String names the level ("study", "series", "instance", "frame").
func (l Level) String() string {
	switch l {
	case Study:
		return "study"
	case Series:
		return "series"
	case Instance:
		return "instance"
	case Frame:
		return "frame"
	}
	return "unknown"
}

// Resource is what a path asks for at its level.
type Resource string

// The resources a WADO-RS path may name.
const (
	// Objects is the DICOM objects themselves (no suffix).
	Objects   Resource = ""
	Metadata  Resource = "metadata"
	Rendered  Resource = "rendered"
	Thumbnail Resource = "thumbnail"
	Frames    Resource = "frames"
	// Bulkdata is a bulk data value of an instance, named "bulkdata" by the
	// standard's examples and "bulk" by Orthanc; both are accepted.
	Bulkdata Resource = "bulkdata"
)

// MaxFrames bounds how many frames one request may list. Each frame may be
// listed once: a list that repeats one would make the PACS send the same
// frame over and over for one request.
const MaxFrames = 1024

// maxPathLen bounds the whole path; real ones are far shorter.
const maxPathLen = 1024

// Path is a parsed WADO-RS path.
type Path struct {
	StudyUID    string
	SeriesUID   string
	InstanceUID string
	Resource    Resource
	// Frames lists the frame numbers (1-based) of a frames request, and of a
	// frame-level rendered or thumbnail request.
	Frames []int
	// Bulk holds the segments after bulk/ or bulkdata/ (tags, item
	// numbers), for a bulk data request.
	Bulk []string
	// bulkWord is the spelling used in the request ("bulk" or "bulkdata").
	bulkWord string
}

// ErrNotAllowed is wrapped by every parse failure.
var ErrNotAllowed = errors.New("not an allowed WADO-RS path")

func refuse(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrNotAllowed, fmt.Sprintf(format, args...))
}

// Level reports the hierarchy level the path addresses.
func (p Path) Level() Level {
	switch {
	case len(p.Frames) > 0 && p.Resource != Frames:
		return Frame
	case p.InstanceUID != "":
		return Instance
	case p.SeriesUID != "":
		return Series
	}
	return Study
}

// String gives the canonical relative path, "studies/…", as parsed.
func (p Path) String() string {
	var b strings.Builder
	b.WriteString("studies/")
	b.WriteString(p.StudyUID)
	if p.SeriesUID != "" {
		b.WriteString("/series/")
		b.WriteString(p.SeriesUID)
	}
	if p.InstanceUID != "" {
		b.WriteString("/instances/")
		b.WriteString(p.InstanceUID)
	}
	writeFrames := func() {
		b.WriteString("/frames/")
		for i, f := range p.Frames {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(strconv.Itoa(f))
		}
	}
	switch p.Resource {
	case Objects:
	case Frames:
		writeFrames()
	case Rendered, Thumbnail:
		if len(p.Frames) > 0 {
			writeFrames()
		}
		b.WriteByte('/')
		b.WriteString(string(p.Resource))
	case Bulkdata:
		b.WriteByte('/')
		if p.bulkWord != "" {
			b.WriteString(p.bulkWord)
		} else {
			b.WriteString("bulkdata")
		}
		for _, s := range p.Bulk {
			b.WriteByte('/')
			b.WriteString(s)
		}
	default:
		b.WriteByte('/')
		b.WriteString(string(p.Resource))
	}
	return b.String()
}

// Parse reads a relative WADO-RS path ("studies/1.2.3/series/…"). The input
// must be the raw (still percent-encoded) path: any '%' is refused, so
// encoded slashes and dots cannot slip through.
func Parse(raw string) (Path, error) {
	var p Path
	if len(raw) > maxPathLen {
		return p, refuse("path is longer than %d bytes", maxPathLen)
	}
	if strings.ContainsAny(raw, "%\\?#;") {
		return p, refuse("path contains an encoded or reserved character")
	}
	segs := strings.Split(raw, "/")
	for _, s := range segs {
		if s == "" {
			return p, refuse("path has an empty segment")
		}
		if s == "." || s == ".." {
			return p, refuse("path has a dot segment")
		}
	}
	next := func(i int) string {
		if i < len(segs) {
			return segs[i]
		}
		return ""
	}
	if next(0) != "studies" || len(segs) < 2 {
		return p, refuse("path must start with studies/{StudyInstanceUID}")
	}
	i := 1
	uid := func(kind string) (string, error) {
		s := next(i)
		if err := CheckUID(s); err != nil {
			return "", refuse("%s UID: %v", kind, err)
		}
		i++
		return s, nil
	}
	var err error
	if p.StudyUID, err = uid("study"); err != nil {
		return p, err
	}
	if next(i) == "series" {
		i++
		if p.SeriesUID, err = uid("series"); err != nil {
			return p, err
		}
		if next(i) == "instances" {
			i++
			if p.InstanceUID, err = uid("instance"); err != nil {
				return p, err
			}
		}
	}
	if i == len(segs) {
		return p, nil
	}
	switch word := next(i); word {
	case "metadata":
		p.Resource = Metadata
		i++
	case "rendered", "thumbnail":
		p.Resource = Resource(word)
		i++
	case "frames":
		if p.InstanceUID == "" {
			return p, refuse("frames need an instance")
		}
		i++
		if p.Frames, err = parseFrames(next(i)); err != nil {
			return p, err
		}
		i++
		p.Resource = Frames
		if w := next(i); w == "rendered" || w == "thumbnail" {
			p.Resource = Resource(w)
			i++
		}
	case "bulk", "bulkdata":
		if p.InstanceUID == "" {
			return p, refuse("bulk data needs an instance")
		}
		p.Resource, p.bulkWord = Bulkdata, word
		i++
		if i == len(segs) {
			return p, refuse("bulk data needs a tag")
		}
		for ; i < len(segs); i++ {
			if !isBulkSegment(segs[i]) {
				return p, refuse("bulk data segment %q is not a tag or item number", segs[i])
			}
			p.Bulk = append(p.Bulk, segs[i])
		}
		if len(p.Bulk) > 16 {
			return p, refuse("bulk data path is too deep")
		}
	default:
		return p, refuse("unknown resource %q", word)
	}
	if i != len(segs) {
		return p, refuse("unexpected segment %q", next(i))
	}
	return p, nil
}

func parseFrames(s string) ([]int, error) {
	if s == "" {
		return nil, refuse("frames need a frame list")
	}
	parts := strings.Split(s, ",")
	if len(parts) > MaxFrames {
		return nil, refuse("more than %d frames requested", MaxFrames)
	}
	out := make([]int, 0, len(parts))
	seen := make(map[int]bool, len(parts))
	for _, f := range parts {
		if f == "" || len(f) > 9 || strings.TrimLeft(f, "0123456789") != "" || (len(f) > 1 && f[0] == '0') {
			// No leading zeros: "01" would name frame 1 without being its
			// canonical form.
			return nil, refuse("frame number %q is not a positive integer without leading zeros", f)
		}
		n, _ := strconv.Atoi(f)
		if n < 1 {
			return nil, refuse("frame numbers start at 1")
		}
		if seen[n] {
			return nil, refuse("frame %d is listed more than once", n)
		}
		seen[n] = true
		out = append(out, n)
	}
	return out, nil
}

func isBulkSegment(s string) bool {
	if len(s) > 8 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return s != ""
}

// CheckUID checks the DICOM UID grammar (PS3.5 §9.1): at most 64
// characters, components of digits separated by single dots, no leading
// zero in a multi-digit component.
func CheckUID(s string) error {
	if s == "" {
		return errors.New("empty")
	}
	if len(s) > 64 {
		return errors.New("longer than 64 characters")
	}
	for _, comp := range strings.Split(s, ".") {
		if comp == "" {
			return errors.New("empty component")
		}
		if strings.TrimLeft(comp, "0123456789") != "" {
			return fmt.Errorf("component %q is not numeric", comp)
		}
		if len(comp) > 1 && comp[0] == '0' {
			return fmt.Errorf("component %q has a leading zero", comp)
		}
	}
	return nil
}

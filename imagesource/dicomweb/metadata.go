package dicomweb

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/smart-imaging/smart_imaging/imagesource"
)

// MaxMetadataBody bounds a WADO-RS metadata answer. Metadata is read whole
// and checked before any of it is sent; a larger answer is a 502.
const MaxMetadataBody = 64 << 20

// maxMetadataBody is MaxMetadataBody, lowered by tests.
var maxMetadataBody = MaxMetadataBody

// errMetadataSyntax is wrapped when a metadata answer is not DICOM JSON as
// PS3.18 Annex F shapes it: an array of data sets, each mapping tags to
// elements.
var errMetadataSyntax = errors.New("the PACS's metadata is not valid DICOM JSON")

// Nesting bounds: sequences within sequences, and any JSON value.
const (
	maxSequenceDepth = 32
	maxJSONDepth     = 64
)

// edit replaces b[from:to] with with.
type edit struct {
	from, to int
	with     string
}

// metadataScan checks a WADO-RS metadata answer and finds the URIs in it,
// in one pass over the bytes without building the data sets: every
// top-level data set must pass req.CheckObject (its StudyInstanceUID and
// PatientID), and every URI a client would follow (BulkDataURI anywhere,
// values of UR elements such as RetrieveURL) is mapped by uri: onto the
// gateway, or dropped.
type metadataScan struct {
	b     []byte
	i     int
	req   *imagesource.Retrieval
	uri   func(string) (string, bool)
	edits []edit
	// values of StudyInstanceUID and PatientID of the current top-level
	// data set.
	studies, patients []string
	objects           int
}

// checkMetadata verifies body (see metadataScan) and returns it with its
// URIs rewritten: a URI under a PACS root is mapped onto the gateway; any
// other BulkDataURI is removed and any other UR value becomes null. Errors
// wrap errMetadataSyntax or imagesource.ErrForeignObject. An empty body is
// an empty answer.
func checkMetadata(body []byte, req *imagesource.Retrieval, uri func(string) (string, bool)) ([]byte, error) {
	s := &metadataScan{b: body, req: req, uri: uri}
	if err := s.list(); err != nil {
		return nil, err
	}
	if len(s.edits) == 0 {
		return body, nil
	}
	if !slices.IsSortedFunc(s.edits, func(a, b edit) int { return a.from - b.from }) {
		slices.SortStableFunc(s.edits, func(a, b edit) int { return a.from - b.from })
	}
	grow := 0
	for _, e := range s.edits {
		grow += len(e.with) - (e.to - e.from)
	}
	out := make([]byte, 0, len(body)+max(grow, 0))
	at := 0
	for _, e := range s.edits {
		out = append(out, body[at:e.from]...)
		out = append(out, e.with...)
		at = e.to
	}
	return append(out, body[at:]...), nil
}

func (s *metadataScan) fail(what string) error {
	return fmt.Errorf("%w: %s at byte %d", errMetadataSyntax, what, s.i)
}

func (s *metadataScan) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

func (s *metadataScan) peek() byte {
	if s.i < len(s.b) {
		return s.b[s.i]
	}
	return 0
}

// list reads the whole answer: [ dataset, … ].
func (s *metadataScan) list() error {
	s.ws()
	if s.i == len(s.b) {
		return nil
	}
	if s.peek() != '[' {
		return s.fail("the answer is not a JSON array")
	}
	s.i++
	s.ws()
	if s.peek() == ']' {
		s.i++
	} else {
		for {
			s.ws()
			s.studies, s.patients = s.studies[:0], s.patients[:0]
			if err := s.dataset(true, 1); err != nil {
				return err
			}
			if err := s.req.CheckObject(s.studies, s.patients); err != nil {
				return fmt.Errorf("metadata object %d: %w", s.objects+1, err)
			}
			s.objects++
			s.ws()
			if s.peek() == ',' {
				s.i++
				continue
			}
			if s.peek() != ']' {
				return s.fail("expected , or ] in the array")
			}
			s.i++
			break
		}
	}
	s.ws()
	if s.i != len(s.b) {
		return s.fail("data after the array")
	}
	return nil
}

// element kinds: what a top-level element's values are collected for.
const (
	kindPlain = iota
	kindStudy
	kindPatient
)

// dataset reads { "ggggeeee": element, … }.
func (s *metadataScan) dataset(top bool, depth int) error {
	if depth > maxSequenceDepth {
		return s.fail("sequences nest too deep")
	}
	if s.peek() != '{' {
		return s.fail("a data set is not a JSON object")
	}
	s.i++
	s.ws()
	if s.peek() == '}' {
		s.i++
		return nil
	}
	var seenStudy, seenPatient bool
	for {
		s.ws()
		from, to, esc, err := s.str()
		if err != nil {
			return err
		}
		if esc || to-from != 10 || !isHex(s.b[from+1:to-1]) {
			return s.fail("a data set key is not a tag")
		}
		kind := kindPlain
		if top {
			switch key := s.b[from+1 : to-1]; {
			case strings.EqualFold(string(key), "0020000D"):
				if seenStudy {
					return s.fail("StudyInstanceUID is given twice")
				}
				kind, seenStudy = kindStudy, true
			case strings.EqualFold(string(key), "00100020"):
				if seenPatient {
					return s.fail("PatientID is given twice")
				}
				kind, seenPatient = kindPatient, true
			}
		}
		s.ws()
		if s.peek() != ':' {
			return s.fail("expected :")
		}
		s.i++
		s.ws()
		if err := s.element(kind, depth); err != nil {
			return err
		}
		s.ws()
		switch s.peek() {
		case ',':
			s.i++
			continue
		case '}':
			s.i++
			return nil
		}
		return s.fail("expected , or } in a data set")
	}
}

func isHex(b []byte) bool {
	for _, c := range b {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return true
}

// element reads { "vr": …, "Value": […], "BulkDataURI": …, … }.
func (s *metadataScan) element(kind, depth int) error {
	if s.peek() != '{' {
		return s.fail("an element is not a JSON object")
	}
	s.i++
	s.ws()
	if s.peek() == '}' {
		s.i++
		return nil
	}
	var (
		vr                     vrClass
		seenVR, seenValue      bool
		valueFrom, valueTo     = -1, -1 // a Value read before vr, to read again
		bulkKey, bulkFrom      = -1, -1
		bulkTo                 int
		bulkCommaBefore        = -1
		bulkCommaAfter         = -1
		commaBefore, lastMemTo = -1, -1
	)
	for {
		s.ws()
		keyFrom, keyTo, esc, err := s.str()
		if err != nil {
			return err
		}
		key := string(s.b[keyFrom+1 : keyTo-1])
		if esc {
			key = s.unquote(keyFrom, keyTo)
		}
		s.ws()
		if s.peek() != ':' {
			return s.fail("expected :")
		}
		s.i++
		s.ws()
		// Member names are matched as encoding/json matches them (case
		// folded): a Go client reads "bulkdatauri" as BulkDataURI.
		switch {
		case strings.EqualFold(key, "vr"):
			if seenVR {
				return s.fail("vr is given twice")
			}
			seenVR = true
			from, to, esc, err := s.str()
			if err != nil {
				return err
			}
			if esc {
				vr = classifyVR(s.unquote(from, to))
			} else {
				vr = classifyVR(string(s.b[from+1 : to-1]))
			}
		case strings.EqualFold(key, "Value"):
			if seenValue {
				return s.fail("Value is given twice")
			}
			seenValue = true
			if kind != kindPlain || seenVR {
				if err := s.values(kind, vr, depth); err != nil {
					return err
				}
			} else {
				valueFrom = s.i
				if err := s.skip(1); err != nil {
					return err
				}
				valueTo = s.i
			}
		case strings.EqualFold(key, "BulkDataURI"):
			if bulkKey >= 0 {
				return s.fail("BulkDataURI is given twice")
			}
			bulkKey, bulkCommaBefore = keyFrom, commaBefore
			from, to, _, err := s.str()
			if err != nil {
				return err
			}
			bulkFrom, bulkTo = from, to
		default:
			if err := s.skip(1); err != nil {
				return err
			}
		}
		lastMemTo = s.i
		s.ws()
		if s.peek() == ',' {
			if bulkKey >= 0 && bulkCommaAfter < 0 && lastMemTo == bulkTo {
				bulkCommaAfter = s.i
			}
			commaBefore = s.i
			s.i++
			continue
		}
		if s.peek() != '}' {
			return s.fail("expected , or } in an element")
		}
		s.i++
		break
	}
	if valueFrom >= 0 && vr != vrOther {
		end := s.i
		s.i = valueFrom
		if err := s.values(kind, vr, depth); err != nil {
			return err
		}
		if s.i != valueTo {
			return s.fail("a Value read twice ended in two places")
		}
		s.i = end
	}
	if bulkKey >= 0 {
		if nu, ok := s.uri(s.unquote(bulkFrom, bulkTo)); ok {
			s.edits = append(s.edits, edit{bulkFrom, bulkTo, quoteJSON(nu)})
		} else {
			// Remove the member and one comma next to it.
			switch {
			case bulkCommaAfter >= 0:
				s.edits = append(s.edits, edit{bulkKey, bulkCommaAfter + 1, ""})
			case bulkCommaBefore >= 0:
				s.edits = append(s.edits, edit{bulkCommaBefore, bulkTo, ""})
			default:
				s.edits = append(s.edits, edit{bulkKey, bulkTo, ""})
			}
		}
	}
	return nil
}

// vrClass is what the scan needs of an element's VR: whether its values
// are data sets (SQ), URIs (UR) or neither. A class, not the VR's text, so
// that reading a VR allocates nothing.
type vrClass uint8

const (
	vrOther vrClass = iota
	vrSQ
	vrUR
)

func classifyVR(vr string) vrClass {
	switch vr {
	case "SQ":
		return vrSQ
	case "UR":
		return vrUR
	}
	return vrOther
}

// values reads an element's Value array: strings collected for the
// identity elements, data sets for SQ, URIs mapped for UR, anything valid
// otherwise.
func (s *metadataScan) values(kind int, vr vrClass, depth int) error {
	if s.peek() != '[' {
		return s.fail("Value is not an array")
	}
	s.i++
	s.ws()
	if s.peek() == ']' {
		s.i++
		return nil
	}
	for {
		s.ws()
		switch {
		case s.peek() == 'n':
			if err := s.literal("null"); err != nil {
				return err
			}
		case kind != kindPlain:
			from, to, _, err := s.str()
			if err != nil {
				return err
			}
			v := s.unquote(from, to)
			if kind == kindStudy {
				s.studies = append(s.studies, v)
			} else {
				s.patients = append(s.patients, v)
			}
		case vr == vrSQ:
			if err := s.dataset(false, depth+1); err != nil {
				return err
			}
		case vr == vrUR:
			from, to, _, err := s.str()
			if err != nil {
				return err
			}
			if nu, ok := s.uri(s.unquote(from, to)); ok {
				s.edits = append(s.edits, edit{from, to, quoteJSON(nu)})
			} else {
				s.edits = append(s.edits, edit{from, to, "null"})
			}
		default:
			if err := s.skip(1); err != nil {
				return err
			}
		}
		s.ws()
		switch s.peek() {
		case ',':
			s.i++
			continue
		case ']':
			s.i++
			return nil
		}
		return s.fail("expected , or ] in a Value")
	}
}

// str reads a JSON string at s.i and returns its span, quotes included,
// and whether it holds escapes.
func (s *metadataScan) str() (from, to int, esc bool, err error) {
	if s.peek() != '"' {
		return 0, 0, false, s.fail("expected a string")
	}
	from = s.i
	for j := s.i + 1; j < len(s.b); j++ {
		switch c := s.b[j]; {
		case c == '"':
			s.i = j + 1
			return from, s.i, esc, nil
		case c == '\\':
			esc = true
			j++
			if j >= len(s.b) {
				break
			}
			switch s.b[j] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if j+4 >= len(s.b) || !isHex(s.b[j+1:j+5]) {
					s.i = j
					return 0, 0, false, s.fail("bad \\u escape")
				}
				j += 4
			default:
				s.i = j
				return 0, 0, false, s.fail("bad escape")
			}
		case c < 0x20:
			s.i = j
			return 0, 0, false, s.fail("control character in a string")
		}
	}
	s.i = len(s.b)
	return 0, 0, false, s.fail("unterminated string")
}

// unquote decodes the JSON string b[from:to] (quotes included).
func (s *metadataScan) unquote(from, to int) string {
	raw := s.b[from:to]
	if !slices.Contains(raw[1:len(raw)-1], '\\') {
		return string(raw[1 : len(raw)-1])
	}
	var v string
	if json.Unmarshal(raw, &v) != nil {
		return "" // str checked the syntax; not reached
	}
	return v
}

func (s *metadataScan) literal(word string) error {
	if !strings.HasPrefix(string(s.b[s.i:min(len(s.b), s.i+len(word))]), word) {
		return s.fail("bad literal")
	}
	s.i += len(word)
	return nil
}

// skip reads any JSON value, checking its syntax.
func (s *metadataScan) skip(depth int) error {
	if depth > maxJSONDepth {
		return s.fail("JSON nests too deep")
	}
	switch c := s.peek(); {
	case c == '"':
		_, _, _, err := s.str()
		return err
	case c == '{' || c == '[':
		closing := byte('}')
		if c == '[' {
			closing = ']'
		}
		s.i++
		s.ws()
		if s.peek() == closing {
			s.i++
			return nil
		}
		for {
			s.ws()
			if c == '{' {
				if _, _, _, err := s.str(); err != nil {
					return err
				}
				s.ws()
				if s.peek() != ':' {
					return s.fail("expected :")
				}
				s.i++
				s.ws()
			}
			if err := s.skip(depth + 1); err != nil {
				return err
			}
			s.ws()
			switch s.peek() {
			case ',':
				s.i++
				continue
			case closing:
				s.i++
				return nil
			}
			return s.fail("expected , or a closing bracket")
		}
	case c == 't':
		return s.literal("true")
	case c == 'f':
		return s.literal("false")
	case c == 'n':
		return s.literal("null")
	case c == '-' || c >= '0' && c <= '9':
		return s.number()
	}
	return s.fail("expected a JSON value")
}

// number reads a JSON number: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
func (s *metadataScan) number() error {
	digits := func() int {
		n := 0
		for s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
			s.i++
			n++
		}
		return n
	}
	if s.peek() == '-' {
		s.i++
	}
	if s.peek() == '0' {
		s.i++
	} else if digits() == 0 {
		return s.fail("bad number")
	}
	if s.peek() == '.' {
		s.i++
		if digits() == 0 {
			return s.fail("bad number")
		}
	}
	if c := s.peek(); c == 'e' || c == 'E' {
		s.i++
		if c := s.peek(); c == '+' || c == '-' {
			s.i++
		}
		if digits() == 0 {
			return s.fail("bad number")
		}
	}
	return nil
}

// quoteJSON writes s as a JSON string.
func quoteJSON(s string) string {
	plain := true
	for i := 0; i < len(s) && plain; i++ {
		c := s[i]
		plain = c >= 0x20 && c < 0x7f && c != '"' && c != '\\'
	}
	if plain {
		return `"` + s + `"`
	}
	return `"` + jsonString(s) + `"`
}

package fhir

import (
	"encoding/json"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// A small FHIR R4 JSON shape checker: the rules that matter to the clients
// of this server, written from the R4 specification (datatype regexes,
// required elements of the resources emitted, "no empty values").

var (
	reDateTime = regexp.MustCompile(`^([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1])(T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00)))?)?)?$`)
	reInstant  = regexp.MustCompile(`^([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)-(0[1-9]|1[0-2])-(0[1-9]|[1-2][0-9]|3[0-1])T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00))$`)
	reID       = regexp.MustCompile(`^[A-Za-z0-9\-\.]{1,64}$`)
	reOIDURN   = regexp.MustCompile(`^urn:oid:[0-2](\.(0|[1-9][0-9]*))+$`)
	reDICOMUID = regexp.MustCompile(`^[0-2](\.(0|[1-9][0-9]*))+$`)
	reUUIDURN  = regexp.MustCompile(`^urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)
	reAbsURI   = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9+.\-]*:\S+$`)
	reCode     = regexp.MustCompile(`^[^\s]+( [^\s]+)*$`)
)

// fhirCheck validates one resource's JSON and returns every problem found.
func fhirCheck(b []byte) []string {
	var v any
	d := json.NewDecoder(strings.NewReader(string(b)))
	d.UseNumber()
	if err := d.Decode(&v); err != nil {
		return []string{"not JSON: " + err.Error()}
	}
	c := &checker{}
	c.noEmpty("", v)
	res, ok := v.(map[string]any)
	if !ok {
		return append(c.errs, "resource is not an object")
	}
	c.resource("", res)
	return c.errs
}

type checker struct{ errs []string }

func (c *checker) errorf(path, format string, args ...any) {
	c.errs = append(c.errs, path+": "+fmt.Sprintf(format, args...))
}

// noEmpty enforces FHIR JSON's rule that no element is empty or null.
func (c *checker) noEmpty(path string, v any) {
	switch x := v.(type) {
	case nil:
		c.errorf(path, "null")
	case string:
		if strings.TrimSpace(x) == "" {
			c.errorf(path, "empty or blank string")
		}
	case []any:
		if len(x) == 0 {
			c.errorf(path, "empty array")
		}
		for i, e := range x {
			c.noEmpty(fmt.Sprintf("%s[%d]", path, i), e)
		}
	case map[string]any:
		if len(x) == 0 {
			c.errorf(path, "empty object")
		}
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			c.noEmpty(path+"."+k, x[k])
		}
	}
}

func str(m map[string]any, k string) (string, bool) {
	s, ok := m[k].(string)
	return s, ok
}

func obj(m map[string]any, k string) (map[string]any, bool) {
	o, ok := m[k].(map[string]any)
	return o, ok
}

func arr(m map[string]any, k string) []map[string]any {
	a, _ := m[k].([]any)
	var out []map[string]any
	for _, e := range a {
		if o, ok := e.(map[string]any); ok {
			out = append(out, o)
		}
	}
	return out
}

func (c *checker) require(path string, m map[string]any, keys ...string) {
	for _, k := range keys {
		if _, ok := m[k]; !ok {
			c.errorf(path, "missing required %s", k)
		}
	}
}

func (c *checker) match(path string, m map[string]any, k string, re *regexp.Regexp) {
	if v, ok := m[k]; ok {
		s, isStr := v.(string)
		if !isStr || !re.MatchString(s) {
			c.errorf(path+"."+k, "%v does not match %s", v, re)
		}
	}
}

func (c *checker) oneOf(path string, m map[string]any, k string, allowed ...string) {
	if v, ok := m[k]; ok {
		for _, a := range allowed {
			if v == a {
				return
			}
		}
		c.errorf(path+"."+k, "%v not one of %v", v, allowed)
	}
}

func (c *checker) unsignedInt(path string, m map[string]any, k string) {
	if v, ok := m[k]; ok {
		n, isNum := v.(json.Number)
		i, err := n.Int64()
		if !isNum || err != nil || i < 0 {
			c.errorf(path+"."+k, "%v is not an unsignedInt", v)
		}
	}
}

func (c *checker) coding(path string, m map[string]any, requireCode bool) {
	c.match(path, m, "system", reAbsURI)
	c.match(path, m, "code", reCode)
	if requireCode {
		c.require(path, m, "system", "code")
	}
}

func (c *checker) reference(path string, m map[string]any) {
	if len(m) == 0 {
		return
	}
	if _, hasRef := m["reference"]; !hasRef {
		if _, hasID := m["identifier"]; !hasID {
			if _, hasDisplay := m["display"]; !hasDisplay {
				c.errorf(path, "reference with neither reference, identifier nor display")
			}
		}
	}
	if id, ok := obj(m, "identifier"); ok {
		c.match(path+".identifier", id, "system", reAbsURI)
	}
}

func (c *checker) resource(path string, r map[string]any) {
	typ, _ := str(r, "resourceType")
	c.require(path, r, "resourceType")
	c.match(path, r, "id", reID)
	if meta, ok := obj(r, "meta"); ok {
		c.match(path+".meta", meta, "lastUpdated", reInstant)
	}
	switch typ {
	case "ImagingStudy":
		c.imagingStudy(path, r)
	case "Endpoint":
		c.endpoint(path, r)
	case "Bundle":
		c.bundle(path, r)
	case "OperationOutcome":
		c.require(path, r, "issue")
		for i, is := range arr(r, "issue") {
			p := fmt.Sprintf("%s.issue[%d]", path, i)
			c.require(p, is, "severity", "code")
			c.oneOf(p, is, "severity", "fatal", "error", "warning", "information")
			c.match(p, is, "code", reCode)
		}
	case "CapabilityStatement":
		c.capability(path, r)
	default:
		c.errorf(path, "unexpected resourceType %q", typ)
	}
}

func (c *checker) imagingStudy(path string, r map[string]any) {
	c.require(path, r, "status", "subject")
	c.oneOf(path, r, "status", "registered", "available", "cancelled", "entered-in-error", "unknown")
	c.match(path, r, "started", reDateTime)
	c.unsignedInt(path, r, "numberOfSeries")
	c.unsignedInt(path, r, "numberOfInstances")
	if s, ok := obj(r, "subject"); ok {
		c.reference(path+".subject", s)
	}
	for i, id := range arr(r, "identifier") {
		p := fmt.Sprintf("%s.identifier[%d]", path, i)
		c.match(p, id, "system", reAbsURI)
		if id["system"] == SystemDICOMUID {
			c.match(p, id, "value", reOIDURN)
		}
	}
	for i, m := range arr(r, "modality") {
		c.coding(fmt.Sprintf("%s.modality[%d]", path, i), m, true)
	}
	for i, e := range arr(r, "endpoint") {
		p := fmt.Sprintf("%s.endpoint[%d]", path, i)
		c.require(p, e, "reference")
	}
	for i, s := range arr(r, "series") {
		p := fmt.Sprintf("%s.series[%d]", path, i)
		c.require(p, s, "uid", "modality")
		c.match(p, s, "uid", reDICOMUID)
		c.match(p, s, "started", reDateTime)
		c.unsignedInt(p, s, "number")
		c.unsignedInt(p, s, "numberOfInstances")
		if m, ok := obj(s, "modality"); ok {
			c.coding(p+".modality", m, true)
		}
		if b, ok := obj(s, "bodySite"); ok {
			c.coding(p+".bodySite", b, false)
		}
		for j, in := range arr(s, "instance") {
			q := fmt.Sprintf("%s.instance[%d]", p, j)
			c.require(q, in, "uid", "sopClass")
			c.match(q, in, "uid", reDICOMUID)
			c.unsignedInt(q, in, "number")
			if sc, ok := obj(in, "sopClass"); ok {
				c.coding(q+".sopClass", sc, true)
				if sc["system"] != SystemURI {
					c.errorf(q+".sopClass", "system %v, want %s", sc["system"], SystemURI)
				}
				c.match(q+".sopClass", sc, "code", reOIDURN)
			}
		}
	}
}

func (c *checker) endpoint(path string, r map[string]any) {
	c.require(path, r, "status", "connectionType", "payloadType", "address")
	c.oneOf(path, r, "status", "active", "suspended", "error", "off", "entered-in-error", "test")
	c.match(path, r, "address", reAbsURI)
	if ct, ok := obj(r, "connectionType"); ok {
		c.coding(path+".connectionType", ct, true)
	}
	for i, pt := range arr(r, "payloadType") {
		for j, cd := range arr(pt, "coding") {
			c.coding(fmt.Sprintf("%s.payloadType[%d].coding[%d]", path, i, j), cd, true)
		}
	}
	for i, e := range arr(r, "extension") {
		p := fmt.Sprintf("%s.extension[%d]", path, i)
		c.require(p, e, "url")
		c.match(p, e, "url", reAbsURI)
	}
}

func (c *checker) bundle(path string, r map[string]any) {
	c.require(path, r, "type")
	c.oneOf(path, r, "type", "document", "message", "transaction", "transaction-response", "batch", "batch-response", "history", "searchset", "collection")
	c.unsignedInt(path, r, "total")
	for i, l := range arr(r, "link") {
		p := fmt.Sprintf("%s.link[%d]", path, i)
		c.require(p, l, "relation", "url")
		c.match(p, l, "url", reAbsURI)
	}
	for i, e := range arr(r, "entry") {
		p := fmt.Sprintf("%s.entry[%d]", path, i)
		c.match(p, e, "fullUrl", reAbsURI)
		if s, ok := obj(e, "search"); ok {
			c.oneOf(p+".search", s, "mode", "match", "include", "outcome")
		}
		if res, ok := obj(e, "resource"); ok {
			c.resource(p+".resource", res)
		}
	}
}

func (c *checker) capability(path string, r map[string]any) {
	c.require(path, r, "status", "date", "kind", "fhirVersion", "format")
	c.oneOf(path, r, "status", "draft", "active", "retired", "unknown")
	c.oneOf(path, r, "kind", "instance", "capability", "requirements")
	c.match(path, r, "date", reDateTime)
	if sw, ok := obj(r, "software"); ok {
		c.require(path+".software", sw, "name")
	}
	if im, ok := obj(r, "implementation"); ok {
		c.require(path+".implementation", im, "description")
		c.match(path+".implementation", im, "url", reAbsURI)
	}
	for i, rest := range arr(r, "rest") {
		p := fmt.Sprintf("%s.rest[%d]", path, i)
		c.require(p, rest, "mode")
		for j, res := range arr(rest, "resource") {
			q := fmt.Sprintf("%s.resource[%d]", p, j)
			c.require(q, res, "type")
			for k, sp := range arr(res, "searchParam") {
				sq := fmt.Sprintf("%s.searchParam[%d]", q, k)
				c.require(sq, sp, "name", "type")
				c.match(sq, sp, "definition", reAbsURI)
				c.oneOf(sq, sp, "type", "number", "date", "string", "token", "reference", "composite", "quantity", "uri", "special")
			}
			for k, in := range arr(res, "interaction") {
				c.require(fmt.Sprintf("%s.interaction[%d]", q, k), in, "code")
			}
		}
	}
}

// mustValid marshals v and fails the test on any shape problem.
func mustValid(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("marshal: %v", err)
	}
	for _, e := range fhirCheck(b) {
		t.Errorf("FHIR shape: %s\n%s", e, b)
	}
	return b
}

// TestCheckerCatchesBadShapes keeps the checker honest: each broken
// document must be rejected.
func TestCheckerCatchesBadShapes(t *testing.T) {
	bad := map[string]string{
		"empty string":      `{"resourceType":"ImagingStudy","status":"available","subject":{"display":"x"},"description":""}`,
		"empty array":       `{"resourceType":"ImagingStudy","status":"available","subject":{"display":"x"},"series":[]}`,
		"empty object":      `{"resourceType":"ImagingStudy","status":"available","subject":{}}`,
		"no subject":        `{"resourceType":"ImagingStudy","status":"available"}`,
		"started no zone":   `{"resourceType":"ImagingStudy","status":"available","subject":{"display":"x"},"started":"2020-01-01T10:00:00"}`,
		"started no secs":   `{"resourceType":"ImagingStudy","status":"available","subject":{"display":"x"},"started":"2020-01-01T10:00Z"}`,
		"bad id":            `{"resourceType":"ImagingStudy","id":"a_b","status":"available","subject":{"display":"x"}}`,
		"long id":           `{"resourceType":"ImagingStudy","id":"` + strings.Repeat("1", 65) + `","status":"available","subject":{"display":"x"}}`,
		"uid not oid":       `{"resourceType":"ImagingStudy","identifier":[{"system":"urn:dicom:uid","value":"1.2.3"}],"status":"available","subject":{"display":"x"}}`,
		"sopClass raw":      `{"resourceType":"ImagingStudy","status":"available","subject":{"display":"x"},"series":[{"uid":"1.2","modality":{"system":"http://dicom.nema.org/resources/ontology/DCM","code":"CT"},"instance":[{"uid":"1.2.3","sopClass":{"system":"urn:ietf:rfc:3986","code":"1.2.840"}}]}]}`,
		"series no modal":   `{"resourceType":"ImagingStudy","status":"available","subject":{"display":"x"},"series":[{"uid":"1.2"}]}`,
		"negative count":    `{"resourceType":"ImagingStudy","status":"available","subject":{"display":"x"},"numberOfSeries":-1}`,
		"endpoint no type":  `{"resourceType":"Endpoint","status":"active","connectionType":{"system":"http://x","code":"dicom-wado-rs"},"address":"https://x/wado"}`,
		"endpoint rel addr": `{"resourceType":"Endpoint","status":"active","connectionType":{"system":"http://x","code":"y"},"payloadType":[{"text":"any"}],"address":"/wado"}`,
		"bundle no type":    `{"resourceType":"Bundle","entry":[]}`,
		"outcome no code":   `{"resourceType":"OperationOutcome","issue":[{"severity":"error"}]}`,
		"null":              `{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"x","diagnostics":null}]}`,
	}
	for name, doc := range bad {
		if errs := fhirCheck([]byte(doc)); len(errs) == 0 {
			t.Errorf("%s: checker accepted %s", name, doc)
		}
	}
	good := `{"resourceType":"ImagingStudy","id":"1.2.3","status":"available","subject":{"reference":"https://ehr/fhir/Patient/1"},"started":"2020-01-01T10:00:00.5+14:00"}`
	if errs := fhirCheck([]byte(good)); len(errs) != 0 {
		t.Errorf("checker rejected a valid study: %v", errs)
	}
}

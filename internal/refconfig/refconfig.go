// Package refconfig reads the tenant configurations of the SMART Imaging
// Access reference server ({"authorization": {...}, "images": {...}}, the
// files of its server/config/ directory and the JSON of its /dyn URLs) and
// says what each field means here. It knows neither Caddy nor the /dyn
// policy: package dynconfig maps a reference config onto a /dyn tenant
// (with the operator's allow list and refusals), and Convert writes the
// Caddyfile route an operator runs instead.
package refconfig

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Authorization types of the reference server.
const (
	TypeSMART       = "smart-on-fhir"
	TypeEpic        = "smart-on-fhir-with-epic-bugfixes"
	TypeMeditech    = "smart-on-fhir-with-meditech-bugfixes"
	TypeIndependent = "smart-on-fhir-independent"
	TypeMock        = "mock"
)

// Image source types and lookups of the reference server.
const (
	ImagesDICOMweb = "dicom-web"
	ImagesDIMSE    = "dicom-dimse"
	LookupByMRN    = "studies-by-mrn"
	LookupAll      = "all-studies-on-server"
)

// DefaultMRNPath is the reference's FHIRPath for the PACS PatientID: the
// value of the patient's identifier of type MR.
const DefaultMRNPath = "identifier.where(type.coding.code='MR').value"

// DefaultBackendScope is the scope the reference's shipped configs request
// for the server's own token, and this gateway's default.
const DefaultBackendScope = "system/Patient.read"

// ErrSchema: the document is not a reference config of the known shape.
var ErrSchema = errors.New("not a reference server config")

// FieldError names the reference field a problem is about.
type FieldError struct {
	// Field is the JSON path ("images.delay.lookupUntil").
	Field string
	// Err wraps ErrSchema.
	Err error
	// Reason says what is wrong.
	Reason string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Reason }

// Unwrap returns the sentinel.
func (e *FieldError) Unwrap() error { return e.Err }

func schemaErr(field, format string, args ...any) error {
	return &FieldError{Field: field, Err: ErrSchema, Reason: fmt.Sprintf(format, args...)}
}

// Config is one reference tenant configuration.
type Config struct {
	Authorization Authorization `json:"authorization"`
	Images        Images        `json:"images"`
}

// Authorization is the reference's "authorization" object.
type Authorization struct {
	// Type is one of the Type constants; empty means smart-on-fhir.
	Type        string  `json:"type"`
	FHIRBaseURL string  `json:"fhirBaseUrl"`
	Scope       *string `json:"scope"`
	Client      *Client `json:"client"`
	// DisableAuthzChecks turns patient binding off (mock only).
	DisableAuthzChecks bool `json:"disableAuthzChecks"`
	// Patient is the mock's fixed patient (a FHIR Patient).
	Patient *Patient `json:"patient"`
}

// Client is the reference server's registration at the EHR.
type Client struct {
	ClientID string `json:"client_id"`
	// JWK is the public key: its alg and kid go in the assertion header.
	JWK *PublicJWK `json:"jwk"`
	// JWKPrivate is the private key, kept as the JSON it came as.
	JWKPrivate   json.RawMessage `json:"jwkPrivate"`
	ClientSecret string          `json:"client_secret"`
}

// PublicJWK is the part of the public JWK the reference reads.
type PublicJWK struct {
	Alg string `json:"alg"`
	Kid string `json:"kid"`
	// Rest is ignored (the public key material).
	Rest map[string]any `json:"-"`
}

// UnmarshalJSON keeps alg and kid and accepts any other member.
func (k *PublicJWK) UnmarshalJSON(b []byte) error {
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	k.Alg, _ = m["alg"].(string)
	k.Kid, _ = m["kid"].(string)
	return nil
}

// Patient is the part of a FHIR Patient the reference reads.
type Patient struct {
	ID         string       `json:"id"`
	Identifier []Identifier `json:"identifier"`
}

// UnmarshalJSON accepts any Patient, keeping id and identifier.
func (p *Patient) UnmarshalJSON(b []byte) error {
	var v struct {
		ID         string       `json:"id"`
		Identifier []Identifier `json:"identifier"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	p.ID, p.Identifier = v.ID, v.Identifier
	return nil
}

// Identifier is a FHIR Identifier.
type Identifier struct {
	System string `json:"system"`
	Value  string `json:"value"`
	Type   *struct {
		Text   string `json:"text"`
		Coding []struct {
			System string `json:"system"`
			Code   string `json:"code"`
		} `json:"coding"`
	} `json:"type"`
}

// Images is the reference's "images" object.
type Images struct {
	Type           string          `json:"type"`
	Lookup         string          `json:"lookup"`
	Endpoint       string          `json:"endpoint"`
	Authentication *Authentication `json:"authentication"`
	MRN            []string        `json:"mrn"`
	AE             string          `json:"ae"`
	Retrieval      string          `json:"retrieval"`
	Delay          *Delay          `json:"delay"`
}

// Authentication is the PACS credential: http-basic or open.
type Authentication struct {
	Type     string `json:"type"`
	Username string `json:"username"`
	Password string `json:"password"`
}

// Delay is the reference's artificial 503s: unix seconds.
type Delay struct {
	LookupUntil   *float64 `json:"lookupUntil"`
	RetrieveUntil *float64 `json:"retrieveUntil"`
}

// Parse reads a reference config. Members whose name starts with "//"
// are comments, as in the reference's files; any other unknown member is
// refused, so a misspelt field is not silently ignored.
func Parse(raw []byte) (*Config, error) {
	var v any
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		return nil, schemaErr("", "not JSON: %v", err)
	}
	if _, ok := v.(map[string]any); !ok {
		return nil, schemaErr("", "must be a JSON object")
	}
	clean := stripComments(v)
	if err := knownMembers("", clean); err != nil {
		return nil, err
	}
	b, err := json.Marshal(clean)
	if err != nil {
		return nil, schemaErr("", "%v", err)
	}
	var c Config
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, schemaErr("", "%s", strings.TrimPrefix(err.Error(), "json: "))
	}
	return &c, nil
}

// IsReference reports whether a JSON document's top level has the
// reference's members ("authorization" and "images").
func IsReference(top map[string]json.RawMessage) bool {
	_, a := top["authorization"]
	return a
}

// members are the reference's fields, by object. encoding/json matches
// names without regard to case, so they are checked here exactly: a
// "fhirBaseURL" must not pass for "fhirBaseUrl".
var members = map[string][]string{
	"":                      {"authorization", "images"},
	"authorization":         {"type", "fhirBaseUrl", "scope", "client", "disableAuthzChecks", "patient"},
	"authorization.client":  {"client_id", "jwk", "jwkPrivate", "client_secret"},
	"images":                {"type", "lookup", "endpoint", "authentication", "mrn", "ae", "retrieval", "delay"},
	"images.authentication": {"type", "username", "password"},
	"images.delay":          {"lookupUntil", "retrieveUntil"},
}

func knownMembers(path string, v any) error {
	known, ok := members[path]
	m, isObj := v.(map[string]any)
	if !ok || !isObj {
		return nil
	}
	for k, sub := range m {
		field := k
		if path != "" {
			field = path + "." + k
		}
		if !slices.Contains(known, k) {
			return schemaErr(field, "not a field of the reference's configs (known: %s)", strings.Join(known, ", "))
		}
		if err := knownMembers(field, sub); err != nil {
			return err
		}
	}
	return nil
}

func stripComments(v any) any {
	switch x := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, sub := range x {
			if strings.HasPrefix(k, "//") {
				continue
			}
			// Patients and JWKs are taken whole.
			if k == "patient" || k == "jwk" || k == "jwkPrivate" {
				out[k] = sub
				continue
			}
			out[k] = stripComments(sub)
		}
		return out
	case []any:
		for i := range x {
			x[i] = stripComments(x[i])
		}
	}
	return v
}

// AuthzType is the authorization type, smart-on-fhir when unset (as the
// reference does).
func (c *Config) AuthzType() string {
	if c.Authorization.Type == "" {
		return TypeSMART
	}
	return c.Authorization.Type
}

// BackendScope is the scope requested for the server's own token ("" when
// unset or null).
func (c *Config) BackendScope() string {
	if c.Authorization.Scope == nil {
		return ""
	}
	return *c.Authorization.Scope
}

// MockMRNs are the PACS PatientIDs of the mock's patient: the values the
// images.mrn FHIRPaths (default: the MR-typed identifier) pick, else the
// first identifier's value, as the reference does; with the system of the
// identifier they came from when all share one.
func (c *Config) MockMRNs() (mrns []string, system string, err error) {
	p := c.Authorization.Patient
	if p == nil {
		return nil, "", nil
	}
	paths := c.Images.MRN
	if len(paths) == 0 {
		paths = []string{DefaultMRNPath}
	}
	for i, expr := range paths {
		ids, err := evalMRN(expr, p.Identifier)
		if err != nil {
			return nil, "", schemaErr(fmt.Sprintf("images.mrn[%d]", i), "%v", err)
		}
		if len(ids) > 0 {
			return values(ids)
		}
	}
	if len(p.Identifier) > 0 && p.Identifier[0].Value != "" {
		return values(p.Identifier[:1])
	}
	return nil, "", nil
}

func values(ids []Identifier) ([]string, string, error) {
	var out []string
	system := ids[0].System
	for _, id := range ids {
		if id.Value != "" {
			out = append(out, id.Value)
		}
		if id.System != system {
			system = ""
		}
	}
	return out, system, nil
}

var (
	byTypeCode = regexp.MustCompile(`^identifier\.where\(\s*type\.coding\.code\s*=\s*'([^']*)'\s*\)\.value$`)
	byTypeText = regexp.MustCompile(`^identifier\.where\(\s*type\.text\s*=\s*'([^']*)'\s*\)\.value$`)
	byIndex    = regexp.MustCompile(`^identifier\[(\d+)\]\.value$`)
)

// evalMRN evaluates the FHIRPath forms the reference's configs use for the
// MRN; others are refused (this is not a FHIRPath engine).
func evalMRN(expr string, ids []Identifier) ([]Identifier, error) {
	expr = strings.TrimSpace(expr)
	var out []Identifier
	switch {
	case byTypeCode.MatchString(expr):
		code := byTypeCode.FindStringSubmatch(expr)[1]
		for _, id := range ids {
			if id.Type == nil {
				continue
			}
			for _, c := range id.Type.Coding {
				if c.Code == code {
					out = append(out, id)
					break
				}
			}
		}
	case byTypeText.MatchString(expr):
		text := byTypeText.FindStringSubmatch(expr)[1]
		for _, id := range ids {
			if id.Type != nil && id.Type.Text == text {
				out = append(out, id)
			}
		}
	case byIndex.MatchString(expr):
		n, _ := strconv.Atoi(byIndex.FindStringSubmatch(expr)[1])
		if n < len(ids) {
			out = append(out, ids[n])
		}
	default:
		return nil, fmt.Errorf("FHIRPath %q is not one of the forms understood here (identifier.where(type.coding.code='…').value, identifier.where(type.text='…').value, identifier[n].value)", expr)
	}
	return out, nil
}

// DelayUntil turns a reference delay instant (unix seconds) into RFC 3339.
func DelayUntil(unix *float64) string {
	if unix == nil {
		return ""
	}
	sec := int64(math.Ceil(*unix))
	return time.Unix(sec, 0).UTC().Format(time.RFC3339)
}

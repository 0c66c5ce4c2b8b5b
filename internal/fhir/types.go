// Package fhir holds the few FHIR R4 (4.0.1) shapes the server emits
// (ImagingStudy, Endpoint, Bundle, OperationOutcome, CapabilityStatement) and
// the mapping from DICOM study attributes to a SMART Imaging Access
// ImagingStudy.
//
// Every optional element is tagged omitempty and every builder in this
// package leaves out elements it has no value for, because FHIR forbids
// empty strings, arrays and objects. Resources write their own resourceType
// when marshalled, so a literal ImagingStudy{} still serializes as a FHIR
// resource.
package fhir

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// Code systems and URLs used by this package.
const (
	// SystemDICOMUID is the identifier system of DICOM UIDs (urn:oid values).
	SystemDICOMUID = "urn:dicom:uid"
	// SystemDCM is the DICOM controlled terminology (modality codes).
	SystemDCM = "http://dicom.nema.org/resources/ontology/DCM"
	// SystemURI is the code system for codes that are URIs (SOP classes).
	SystemURI = "urn:ietf:rfc:3986"
	// SystemConnectionType is the Endpoint connection type code system.
	SystemConnectionType = "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"
	// SystemPayloadType is the Endpoint payload type code system.
	SystemPayloadType = "http://terminology.hl7.org/CodeSystem/endpoint-payload-type"
	// SystemRestfulSecurityService is the code system of
	// CapabilityStatement.rest.security.service.
	SystemRestfulSecurityService = "http://terminology.hl7.org/CodeSystem/restful-security-service"

	// ExtRequiresAccessToken is the Argonaut IG (0.1) requires-access-token
	// extension URL.
	ExtRequiresAccessToken = "http://fhir.org/argonaut/smart-imaging/StructureDefinition/requires-access-token"
	// ExtRequiresAccessTokenS4S is the 2023 Sync for Science URL of the same
	// extension, still read by older clients.
	ExtRequiresAccessTokenS4S = "http://hl7.org/fhir/smart-app-launch/StructureDefinition/requires-access-token"
	// ExtOAuthURIs is the SMART extension that lists OAuth endpoints in a
	// CapabilityStatement.
	ExtOAuthURIs = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"

	// ProfileSmartImagingStudy is the canonical URL of the IG's ImagingStudy
	// profile.
	ProfileSmartImagingStudy = "http://fhir.org/argonaut/smart-imaging/StructureDefinition/smart-imaging-study"

	// ContentType is the media type of every FHIR answer.
	ContentType = "application/fhir+json; charset=utf-8"
)

// Resource is a FHIR resource this package can put in a Bundle.
type Resource interface {
	// ResourceType returns the FHIR resource type name ("ImagingStudy").
	ResourceType() string
}

// Coding is a code from a code system.
type Coding struct {
	System  string `json:"system,omitempty"`
	Version string `json:"version,omitempty"`
	Code    string `json:"code,omitempty"`
	Display string `json:"display,omitempty"`
}

// CodeableConcept is a concept given as codings and/or text.
type CodeableConcept struct {
	Coding []Coding `json:"coding,omitempty"`
	Text   string   `json:"text,omitempty"`
}

// Identifier is a business identifier.
type Identifier struct {
	Use      string     `json:"use,omitempty"`
	System   string     `json:"system,omitempty"`
	Value    string     `json:"value,omitempty"`
	Assigner *Reference `json:"assigner,omitempty"`
}

// Reference points at another resource: by URL, by identifier, or only by
// display text.
type Reference struct {
	Reference  string      `json:"reference,omitempty"`
	Type       string      `json:"type,omitempty"`
	Identifier *Identifier `json:"identifier,omitempty"`
	Display    string      `json:"display,omitempty"`
}

// IsZero reports whether the reference carries nothing.
func (r Reference) IsZero() bool {
	return r.Reference == "" && r.Type == "" && r.Identifier == nil && r.Display == ""
}

// Extension is a FHIR extension: a URL with either a value or nested
// extensions. Only the value types this server uses are modelled.
type Extension struct {
	URL          string      `json:"url"`
	ValueBoolean *bool       `json:"valueBoolean,omitempty"`
	ValueString  string      `json:"valueString,omitempty"`
	ValueURI     string      `json:"valueUri,omitempty"`
	ValueCode    string      `json:"valueCode,omitempty"`
	Extension    []Extension `json:"extension,omitempty"`
}

// Meta is resource metadata.
type Meta struct {
	LastUpdated string   `json:"lastUpdated,omitempty"`
	Profile     []string `json:"profile,omitempty"`
}

// ImagingStudy is an R4 ImagingStudy, shaped for the SmartImagingStudy
// profile.
type ImagingStudy struct {
	ID                string               `json:"id,omitempty"`
	Meta              *Meta                `json:"meta,omitempty"`
	Identifier        []Identifier         `json:"identifier,omitempty"`
	Status            string               `json:"status,omitempty"`
	Modality          []Coding             `json:"modality,omitempty"`
	Subject           *Reference           `json:"subject,omitempty"`
	Started           string               `json:"started,omitempty"`
	Endpoint          []Reference          `json:"endpoint,omitempty"`
	NumberOfSeries    *int                 `json:"numberOfSeries,omitempty"`
	NumberOfInstances *int                 `json:"numberOfInstances,omitempty"`
	Description       string               `json:"description,omitempty"`
	Series            []ImagingStudySeries `json:"series,omitempty"`
}

// ImagingStudySeries is one ImagingStudy.series.
type ImagingStudySeries struct {
	UID               string                 `json:"uid"`
	Number            *int                   `json:"number,omitempty"`
	Modality          Coding                 `json:"modality"`
	Description       string                 `json:"description,omitempty"`
	NumberOfInstances *int                   `json:"numberOfInstances,omitempty"`
	BodySite          *Coding                `json:"bodySite,omitempty"`
	Started           string                 `json:"started,omitempty"`
	Instance          []ImagingStudyInstance `json:"instance,omitempty"`
}

// ImagingStudyInstance is one ImagingStudy.series.instance.
type ImagingStudyInstance struct {
	UID      string `json:"uid"`
	SOPClass Coding `json:"sopClass"`
	Number   *int   `json:"number,omitempty"`
	Title    string `json:"title,omitempty"`
}

// Endpoint is an R4 Endpoint (the WADO-RS base a client retrieves from).
type Endpoint struct {
	ID              string            `json:"id,omitempty"`
	Extension       []Extension       `json:"extension,omitempty"`
	Status          string            `json:"status,omitempty"`
	ConnectionType  Coding            `json:"connectionType"`
	Name            string            `json:"name,omitempty"`
	PayloadType     []CodeableConcept `json:"payloadType,omitempty"`
	PayloadMimeType []string          `json:"payloadMimeType,omitempty"`
	Address         string            `json:"address,omitempty"`
}

// OperationOutcome reports errors and warnings.
type OperationOutcome struct {
	Issue []OperationOutcomeIssue `json:"issue"`
}

// OperationOutcomeIssue is one OperationOutcome.issue.
type OperationOutcomeIssue struct {
	// Severity is fatal, error, warning or information.
	Severity string `json:"severity"`
	// Code is an IssueType code ("not-found", "forbidden", "login", …).
	Code        string `json:"code"`
	Diagnostics string `json:"diagnostics,omitempty"`
}

// Bundle is an R4 Bundle (searchset here).
type Bundle struct {
	ID    string        `json:"id,omitempty"`
	Type  string        `json:"type"`
	Total *int          `json:"total,omitempty"`
	Link  []BundleLink  `json:"link,omitempty"`
	Entry []BundleEntry `json:"entry,omitempty"`
}

// BundleLink is one Bundle.link.
type BundleLink struct {
	Relation string `json:"relation"`
	URL      string `json:"url"`
}

// BundleEntry is one Bundle.entry.
type BundleEntry struct {
	FullURL  string        `json:"fullUrl,omitempty"`
	Resource Resource      `json:"resource,omitempty"`
	Search   *BundleSearch `json:"search,omitempty"`
}

// BundleSearch is Bundle.entry.search.
type BundleSearch struct {
	// Mode is match or include.
	Mode string `json:"mode,omitempty"`
}

// RawResource is a resource of a type this package does not model, kept as
// its JSON text when a Bundle is decoded.
type RawResource struct {
	Type string
	JSON json.RawMessage
}

// ResourceType implements Resource.
func (r *RawResource) ResourceType() string { return r.Type }

// MarshalJSON writes the resource as it was read.
func (r *RawResource) MarshalJSON() ([]byte, error) { return r.JSON, nil }

// ResourceType implements Resource.
func (ImagingStudy) ResourceType() string { return "ImagingStudy" }

// ResourceType implements Resource.
func (Endpoint) ResourceType() string { return "Endpoint" }

// ResourceType implements Resource.
func (OperationOutcome) ResourceType() string { return "OperationOutcome" }

// ResourceType implements Resource.
func (Bundle) ResourceType() string { return "Bundle" }

// ResourceType implements Resource.
func (CapabilityStatement) ResourceType() string { return "CapabilityStatement" }

// MarshalJSON writes the study with its resourceType.
func (s ImagingStudy) MarshalJSON() ([]byte, error) {
	type plain ImagingStudy
	return marshalTyped(s.ResourceType(), struct {
		ResourceType string `json:"resourceType"`
		plain
	}{s.ResourceType(), plain(s)})
}

// MarshalJSON writes the endpoint with its resourceType.
func (e Endpoint) MarshalJSON() ([]byte, error) {
	type plain Endpoint
	return marshalTyped(e.ResourceType(), struct {
		ResourceType string `json:"resourceType"`
		plain
	}{e.ResourceType(), plain(e)})
}

// MarshalJSON writes the outcome with its resourceType.
func (o OperationOutcome) MarshalJSON() ([]byte, error) {
	type plain OperationOutcome
	return marshalTyped(o.ResourceType(), struct {
		ResourceType string `json:"resourceType"`
		plain
	}{o.ResourceType(), plain(o)})
}

// MarshalJSON writes the bundle with its resourceType.
func (b Bundle) MarshalJSON() ([]byte, error) {
	type plain Bundle
	return marshalTyped(b.ResourceType(), struct {
		ResourceType string `json:"resourceType"`
		plain
	}{b.ResourceType(), plain(b)})
}

// MarshalJSON writes the capability statement with its resourceType.
func (c CapabilityStatement) MarshalJSON() ([]byte, error) {
	type plain CapabilityStatement
	return marshalTyped(c.ResourceType(), struct {
		ResourceType string `json:"resourceType"`
		plain
	}{c.ResourceType(), plain(c)})
}

// marshalTyped encodes v without HTML escaping: json.Marshal escapes the
// result again when asked to, and WriteJSON's encoder does not ask.
func marshalTyped(typ string, v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, fmt.Errorf("fhir: encode %s: %w", typ, err)
	}
	return bytes.TrimRight(buf.Bytes(), "\n"), nil
}

// UnmarshalJSON reads an entry, decoding its resource into the matching type
// of this package (*ImagingStudy, *Endpoint, *OperationOutcome, *Bundle,
// *CapabilityStatement) or a *RawResource.
func (e *BundleEntry) UnmarshalJSON(b []byte) error {
	var raw struct {
		FullURL  string          `json:"fullUrl"`
		Resource json.RawMessage `json:"resource"`
		Search   *BundleSearch   `json:"search"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return fmt.Errorf("fhir: decode bundle entry: %w", err)
	}
	e.FullURL, e.Search, e.Resource = raw.FullURL, raw.Search, nil
	if len(raw.Resource) == 0 || string(raw.Resource) == "null" {
		return nil
	}
	r, err := DecodeResource(raw.Resource)
	if err != nil {
		return err
	}
	e.Resource = r
	return nil
}

// DecodeResource reads one FHIR resource by its resourceType.
func DecodeResource(b []byte) (Resource, error) {
	var head struct {
		ResourceType string `json:"resourceType"`
	}
	if err := json.Unmarshal(b, &head); err != nil {
		return nil, fmt.Errorf("fhir: decode resource: %w", err)
	}
	var r Resource
	switch head.ResourceType {
	case "":
		return nil, fmt.Errorf("fhir: decode resource: no resourceType")
	case "ImagingStudy":
		r = new(ImagingStudy)
	case "Endpoint":
		r = new(Endpoint)
	case "OperationOutcome":
		r = new(OperationOutcome)
	case "Bundle":
		r = new(Bundle)
	case "CapabilityStatement":
		r = new(CapabilityStatement)
	default:
		return &RawResource{Type: head.ResourceType, JSON: append(json.RawMessage(nil), b...)}, nil
	}
	if err := json.Unmarshal(b, r); err != nil {
		return nil, fmt.Errorf("fhir: decode %s: %w", head.ResourceType, err)
	}
	return r, nil
}

// Interface guards
var (
	_ Resource = ImagingStudy{}
	_ Resource = Endpoint{}
	_ Resource = OperationOutcome{}
	_ Resource = Bundle{}
	_ Resource = CapabilityStatement{}
	_ Resource = (*RawResource)(nil)

	_ json.Marshaler   = ImagingStudy{}
	_ json.Marshaler   = Endpoint{}
	_ json.Marshaler   = OperationOutcome{}
	_ json.Marshaler   = Bundle{}
	_ json.Marshaler   = CapabilityStatement{}
	_ json.Marshaler   = (*RawResource)(nil)
	_ json.Unmarshaler = (*BundleEntry)(nil)
)

package fhir

import (
	"time"
)

// CapabilityStatement is an R4 CapabilityStatement, limited to what this
// server declares.
type CapabilityStatement struct {
	ID             string                             `json:"id,omitempty"`
	Name           string                             `json:"name,omitempty"`
	Title          string                             `json:"title,omitempty"`
	Status         string                             `json:"status"`
	Date           string                             `json:"date"`
	Publisher      string                             `json:"publisher,omitempty"`
	Description    string                             `json:"description,omitempty"`
	Kind           string                             `json:"kind"`
	Software       *CapabilityStatementSoftware       `json:"software,omitempty"`
	Implementation *CapabilityStatementImplementation `json:"implementation,omitempty"`
	FHIRVersion    string                             `json:"fhirVersion"`
	Format         []string                           `json:"format"`
	Rest           []CapabilityStatementRest          `json:"rest,omitempty"`
}

// CapabilityStatementSoftware is CapabilityStatement.software.
type CapabilityStatementSoftware struct {
	Name    string `json:"name"`
	Version string `json:"version,omitempty"`
}

// CapabilityStatementImplementation is CapabilityStatement.implementation.
type CapabilityStatementImplementation struct {
	Description string `json:"description"`
	URL         string `json:"url,omitempty"`
}

// CapabilityStatementRest is one CapabilityStatement.rest.
type CapabilityStatementRest struct {
	Mode     string         `json:"mode"`
	Security *RestSecurity  `json:"security,omitempty"`
	Resource []RestResource `json:"resource,omitempty"`
}

// RestSecurity is CapabilityStatement.rest.security.
type RestSecurity struct {
	Extension   []Extension       `json:"extension,omitempty"`
	CORS        *bool             `json:"cors,omitempty"`
	Service     []CodeableConcept `json:"service,omitempty"`
	Description string            `json:"description,omitempty"`
}

// RestResource is CapabilityStatement.rest.resource.
type RestResource struct {
	Type             string            `json:"type"`
	SupportedProfile []string          `json:"supportedProfile,omitempty"`
	Documentation    string            `json:"documentation,omitempty"`
	Interaction      []RestInteraction `json:"interaction,omitempty"`
	SearchInclude    []string          `json:"searchInclude,omitempty"`
	SearchParam      []SearchParam     `json:"searchParam,omitempty"`
}

// RestInteraction is CapabilityStatement.rest.resource.interaction.
type RestInteraction struct {
	Code string `json:"code"`
}

// SearchParam is CapabilityStatement.rest.resource.searchParam.
type SearchParam struct {
	Name string `json:"name"`
	// Definition is the canonical URL of the SearchParameter.
	Definition string `json:"definition,omitempty"`
	// Type is number, date, string, token, reference, composite, quantity,
	// uri or special.
	Type          string `json:"type"`
	Documentation string `json:"documentation,omitempty"`
}

// CapabilityOptions says what CapabilityStatement declares.
type CapabilityOptions struct {
	// Date is the statement's date; zero means now.
	Date time.Time
	// SoftwareName and SoftwareVersion describe this server; an empty name
	// becomes "smart_imaging".
	SoftwareName    string
	SoftwareVersion string
	// BaseURL is the FHIR base of the route (implementation.url).
	BaseURL string
	// Description is implementation.description; a default is used when
	// empty (R4 requires it).
	Description string
	// OAuth endpoints, listed in the oauth-uris extension when any is set.
	AuthorizeURL  string
	TokenURL      string
	IntrospectURL string
	RevokeURL     string
	RegisterURL   string
	ManageURL     string
	// CORS, when true, declares rest.security.cors.
	CORS bool
	// SearchParams are declared for ImagingStudy after the default ones
	// (patient, subject, identifier, _lastUpdated). A param with the name of
	// a default one replaces it.
	SearchParams []SearchParam
}

// Default ImagingStudy search parameters (R4 SearchParameter canonicals).
var defaultSearchParams = []SearchParam{
	{Name: "patient", Type: "reference", Definition: "http://hl7.org/fhir/SearchParameter/clinical-patient",
		Documentation: "The patient whose studies are requested; must be the patient in the access token's context."},
	{Name: "subject", Type: "reference", Definition: "http://hl7.org/fhir/SearchParameter/ImagingStudy-subject",
		Documentation: "Same as patient, as a Patient reference."},
	{Name: "identifier", Type: "token", Definition: "http://hl7.org/fhir/SearchParameter/clinical-identifier",
		Documentation: "A DICOM Study Instance UID as urn:oid:{uid} (optionally with system urn:dicom:uid)."},
	{Name: "_lastUpdated", Type: "date", Definition: "http://hl7.org/fhir/SearchParameter/Resource-lastUpdated",
		Documentation: "Only studies updated in the given range, e.g. gt2023-04-17T04:00:00Z."},
}

// NewCapabilityStatement builds the server's own CapabilityStatement (kind
// instance, FHIR 4.0.1, JSON only) declaring ImagingStudy search-type with
// _include=ImagingStudy:endpoint and the SMART-on-FHIR security service.
func NewCapabilityStatement(opts CapabilityOptions) CapabilityStatement {
	date := opts.Date
	if date.IsZero() {
		date = time.Now()
	}
	name := opts.SoftwareName
	if name == "" {
		name = "smart_imaging"
	}
	desc := opts.Description
	if desc == "" {
		desc = "SMART Imaging Access server: ImagingStudy search and DICOMweb WADO-RS retrieval bound to the patient in the SMART access token."
	}

	sec := &RestSecurity{
		Service: []CodeableConcept{{
			Coding: []Coding{{System: SystemRestfulSecurityService, Code: "SMART-on-FHIR", Display: "SMART-on-FHIR"}},
			Text:   "OAuth2 using SMART-on-FHIR profile (see http://docs.smarthealthit.org)",
		}},
		Description: "Requests carry a SMART on FHIR access token; searches and retrievals are bound to the patient in the token's context.",
	}
	if opts.CORS {
		sec.CORS = ptr(true)
	}
	var uris []Extension
	for _, u := range []struct{ name, url string }{
		{"authorize", opts.AuthorizeURL},
		{"token", opts.TokenURL},
		{"introspect", opts.IntrospectURL},
		{"revoke", opts.RevokeURL},
		{"register", opts.RegisterURL},
		{"manage", opts.ManageURL},
	} {
		if u.url != "" {
			uris = append(uris, Extension{URL: u.name, ValueURI: u.url})
		}
	}
	if len(uris) > 0 {
		sec.Extension = []Extension{{URL: ExtOAuthURIs, Extension: uris}}
	}

	params := append([]SearchParam(nil), defaultSearchParams...)
	for _, p := range opts.SearchParams {
		replaced := false
		for i := range params {
			if params[i].Name == p.Name {
				params[i], replaced = p, true
				break
			}
		}
		if !replaced {
			params = append(params, p)
		}
	}

	return CapabilityStatement{
		Status:      "active",
		Date:        date.UTC().Format(time.RFC3339),
		Kind:        "instance",
		Software:    &CapabilityStatementSoftware{Name: name, Version: opts.SoftwareVersion},
		FHIRVersion: "4.0.1",
		Format:      []string{"json"},
		Implementation: &CapabilityStatementImplementation{
			Description: desc,
			URL:         opts.BaseURL,
		},
		Rest: []CapabilityStatementRest{{
			Mode:     "server",
			Security: sec,
			Resource: []RestResource{{
				Type:             "ImagingStudy",
				SupportedProfile: []string{ProfileSmartImagingStudy},
				Interaction:      []RestInteraction{{Code: "search-type"}},
				SearchInclude:    []string{"ImagingStudy:endpoint"},
				SearchParam:      params,
			}},
		}},
	}
}

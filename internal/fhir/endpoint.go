package fhir

// WADOEndpoint builds the DICOM WADO-RS Endpoint a client retrieves a study
// from: status active, connection type dicom-wado-rs, payload type "any"
// with MIME type application/dicom, and address as the WADO-RS base URL (the
// client appends /studies/{uid}). id may be empty, as for a response-local
// urn:uuid entry.
//
// When requiresToken is set, the requires-access-token extension
// (valueBoolean true) is added under the IG 0.1 URL and the 2023 S4S URL:
// the latest IG text dropped it, but older clients look for it. It is left
// out where it would not be true (a route that needs no access token).
func WADOEndpoint(id, address string, requiresToken bool) Endpoint {
	var ext []Extension
	if requiresToken {
		// Not in the latest IG; kept for older clients, only where true.
		ext = []Extension{
			{URL: ExtRequiresAccessToken, ValueBoolean: ptr(true)},
			{URL: ExtRequiresAccessTokenS4S, ValueBoolean: ptr(true)},
		}
	}
	return Endpoint{
		ID:             id,
		Extension:      ext,
		Status:         "active",
		ConnectionType: Coding{System: SystemConnectionType, Code: "dicom-wado-rs"},
		PayloadType: []CodeableConcept{{
			Coding: []Coding{{System: SystemPayloadType, Code: "any"}},
		}},
		PayloadMimeType: []string{"application/dicom"},
		Address:         address,
	}
}

func ptr[T any](v T) *T { return &v }

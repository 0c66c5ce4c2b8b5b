// Package fhirclient reads the gateway's answers the way a client app
// does, for the benchmark harness and the black-box tests. It decodes with
// its own minimal types, not internal/fhir's, so a mistake in the
// gateway's encoder cannot hide behind the same mistake in the decoder.
package fhirclient

import (
	"encoding/json"
	"fmt"
	"strings"
)

// StudyEndpoints reads an ImagingStudy searchset Bundle and returns, for
// each study, its StudyInstanceUID (the identifier's urn:oid: value)
// mapped to the address of the Endpoint the study names. An answer that
// is not a Bundle, or a study whose Endpoint is not in the Bundle, is an
// error.
func StudyEndpoints(body []byte) (map[string]string, error) {
	var b struct {
		ResourceType string `json:"resourceType"`
		Entry        []struct {
			FullURL  string `json:"fullUrl"`
			Resource struct {
				ResourceType string `json:"resourceType"`
				Address      string `json:"address"`
				Identifier   []struct {
					Value string `json:"value"`
				} `json:"identifier"`
				Endpoint []struct {
					Reference string `json:"reference"`
				} `json:"endpoint"`
			} `json:"resource"`
		} `json:"entry"`
	}
	if err := json.Unmarshal(body, &b); err != nil || b.ResourceType != "Bundle" {
		return nil, fmt.Errorf("fhirclient: the answer is not a Bundle (%v): %.300s", err, body)
	}
	addr := map[string]string{}
	for _, e := range b.Entry {
		if e.Resource.ResourceType == "Endpoint" {
			addr[e.FullURL] = e.Resource.Address
		}
	}
	out := map[string]string{}
	for _, e := range b.Entry {
		r := e.Resource
		if r.ResourceType != "ImagingStudy" || len(r.Endpoint) == 0 {
			continue
		}
		uid := ""
		for _, id := range r.Identifier {
			if v, ok := strings.CutPrefix(id.Value, "urn:oid:"); ok {
				uid = v
				break
			}
		}
		if uid == "" {
			continue
		}
		a, ok := addr[r.Endpoint[0].Reference]
		if !ok {
			return nil, fmt.Errorf("fhirclient: study %s names Endpoint %q, which is not in the Bundle", uid, r.Endpoint[0].Reference)
		}
		out[uid] = a
	}
	return out, nil
}

package caddymodule

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// caddyfileSeeds are smart_imaging blocks: every one in the annotated
// example and the examples' Caddyfiles, plus odd hand-written ones.
func caddyfileSeeds(tb testing.TB) []string {
	seeds := []string{
		"smart_imaging",
		"smart_imaging {\n}",
		"smart_imaging {\n\tauthz mock {\n\t\tpatient p1 mrn m1 m2\n\t}\n\timages folder ./studies {\n\t\tlookup studies-by-mrn\n\t}\n}",
		"smart_imaging {\n\tauthz mock {\n\t\tdisable_authz_checks\n\t}\n\timages dicomweb http://127.0.0.1:8042/dicom-web {\n\t\tlookup all-studies\n\t\tbasic_auth u p\n\t\tqido_timeout 1s\n\t\tmax_concurrent_qido 2\n\t\tpacs_url https://pacs.example.org/dicom-web\n\t\ttransport http {\n\t\t\tkeepalive 500ms\n\t\t\tresponse_header_timeout 2s\n\t\t}\n\t\tlb_policy round_robin\n\t\tto 127.0.0.1:8043\n\t}\n\tstudy_token_key AAAA BBBB\n\tstudy_token_ttl 10m\n\tbase_url https://x.example.org/p\n\troute_id r1\n\tcors https://a.example.org *\n\tdynamic_config {\n\t\tallow_hosts 127.0.0.1:8042 ehr.example.org\n\t\tallow_mock\n\t\tmax_configs 3\n\t}\n}",
		"smart_imaging {\n\tauthz smart-on-fhir {\n\t\tfhir_base_url https://ehr.example.org/fhir\n\t\tclient_id c\n\t\tclient_secret {env.S}\n\t\tprivate_key /k.jwk\n\t\tprivate_key_alg ES384\n\t\tvalidation jwt\n\t\tjwks_url https://ehr.example.org/jwks\n\t\taudience a b\n\t\tpatient_claim fhirUser\n\t\taccept_scopes patient/DiagnosticReport.read\n\t\tmrn_system urn:oid:1.2.3\n\t\tpatient_lookup_token caller\n\t\tcache_ttl 1m\n\t\tinactive_cache_ttl 5s\n\t\ttimeout 3s\n\t\tcache_size 10\n\t}\n\timages dicomweb http://pacs/dicom-web\n}",
		"smart_imaging {\n\tauthz\n\timages\n}",
		"smart_imaging {\n\tauthz mock {\n\t\tpatient\n\t}\n}",
		"smart_imaging {\n\tauthz mock { patient p mrn }\n}",
		"smart_imaging {\n\timages dicomweb {\n\t\thandle_response\n\t}\n}",
		"smart_imaging {\n\timages dicomweb http://p {\n\t\t@m path /x\n\t\ttransport http {\n\t\t\ttls {\n\t\t\t}\n\t\t}\n\t}\n}",
		"smart_imaging {\n\tdynamic_config\n\tdynamic_config {\n\t}\n}",
		"smart_imaging {\n\tstudy_token_ttl -1s\n\tstudy_token_ttl\n\tcors\n\tbase_url\n}",
		"smart_imaging m {\n}",
		"smart_imaging {\n\tauthz mock {\n\t\tpatient p\n\t}\n\tauthz mock {\n\t}\n}",
		"smart_imaging {\n\timages dicomweb http://p {\n\t\tbasic_auth a\n\t\tbearer\n\t\tqido_timeout x\n\t\tmax_concurrent_qido 0\n\t\tpacs_url\n\t\tlookup\n\t}\n}",
		"smart_imaging {\n\timages folder {\n\t}\n}",
		"smart_imaging {\n\timages nope x\n\tauthz nope\n}",
	}
	var files []string
	for _, pattern := range []string{"../Caddyfile.example", "../examples/*/Caddyfile", "../examples/*/*.caddyfile", "../integration/caddyfile_adapt/*"} {
		m, _ := filepath.Glob(pattern)
		files = append(files, m...)
	}
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			tb.Fatal(err)
		}
		seeds = append(seeds, smartImagingBlocks(string(b))...)
	}
	return seeds
}

// smartImagingBlocks cuts every "smart_imaging {…}" block out of a
// Caddyfile (brace counting; good enough for seeds).
func smartImagingBlocks(s string) []string {
	var out []string
	for {
		i := strings.Index(s, "smart_imaging {")
		if i < 0 {
			return out
		}
		depth, end := 0, -1
		for j := i; j < len(s) && end < 0; j++ {
			switch s[j] {
			case '{':
				depth++
			case '}':
				depth--
				if depth == 0 {
					end = j + 1
				}
			}
		}
		if end < 0 {
			return out
		}
		out = append(out, s[i:end])
		s = s[end:]
	}
}

// FuzzCaddyfile feeds text to the smart_imaging Caddyfile parser (and,
// through it, to the authz and images sub-parsers and the reverse proxy's):
// it must never panic or hang, and what it accepts must encode as JSON.
func FuzzCaddyfile(f *testing.F) {
	for _, s := range caddyfileSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, input string) {
		// NewTestDispenser log.Fatals on a tokenizer error: tokenize first.
		tokens, err := caddyfile.Tokenize([]byte(input), "Caddyfile")
		if err != nil || len(tokens) > 2000 {
			return
		}
		var h Handler
		if err := h.UnmarshalCaddyfile(caddyfile.NewDispenser(tokens)); err != nil {
			return
		}
		for name, raw := range map[string]json.RawMessage{"authz": h.AuthzRaw, "images": h.ImagesRaw} {
			if raw != nil && !json.Valid(raw) {
				t.Fatalf("accepted input produced invalid %s JSON %q from %q", name, raw, input)
			}
		}
		if _, err := json.Marshal(&h); err != nil {
			t.Fatalf("accepted input does not encode as JSON: %v (input %q)", err, input)
		}
	})
}

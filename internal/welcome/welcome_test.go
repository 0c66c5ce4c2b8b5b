package welcome

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestWriteNegotiatesAndEscapes(t *testing.T) {
	p := Page{FHIRBase: "https://x/<b>/fhir", WADOBase: "https://x/wado/{study token}", AuthMode: "mock"}
	for accept, want := range map[string]string{
		"text/html,application/xhtml+xml,*/*;q=0.8": "text/html",
		"application/fhir+json":                     "application/json",
		"":                                          "application/json",
		"application/json, text/html":               "application/json",
	} {
		r := httptest.NewRequest(http.MethodGet, "/fhir", nil)
		r.Header.Set("Accept", accept)
		w := httptest.NewRecorder()
		Write(w, r, p)
		if ct := w.Header().Get("Content-Type"); !strings.HasPrefix(ct, want) {
			t.Errorf("Accept %q: Content-Type %q, want %s", accept, ct, want)
		}
		if want == "text/html" && strings.Contains(w.Body.String(), "<b>") {
			t.Errorf("HTML not escaped: %s", w.Body)
		}
	}
}

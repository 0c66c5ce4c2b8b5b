package metacache

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/smart-imaging/smart_imaging/imagesource"
	"github.com/smart-imaging/smart_imaging/imagesource/folder"
	"github.com/smart-imaging/smart_imaging/imagesource/wadopath"
	"github.com/smart-imaging/smart_imaging/internal/dicomgen"
	"github.com/smart-imaging/smart_imaging/pacskey"
)

// TestFolderMetadataThroughTheCache: in front of a real folder source,
// the cached answer is byte for byte the source's own for the same
// request, its URLs under the request's own study token.
func TestFolderMetadataThroughTheCache(t *testing.T) {
	dir := t.TempDir()
	const uid = "1.2.826.0.1.3680043.10.1082.99.1"
	if _, err := dicomgen.WriteStudy(dir, dicomgen.StudySpec{PatientID: "FOLDER-1", StudyUID: uid, Series: 2, InstancesPerSeries: 3, Rows: 8, Cols: 8}); err != nil {
		t.Fatal(err)
	}
	src, err := folder.Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := newCache(t, src, Config{})
	p, err := wadopath.Parse("studies/" + uid + "/metadata")
	if err != nil {
		t.Fatal(err)
	}
	get := func(s imagesource.Source, token string) []byte {
		t.Helper()
		w := httptest.NewRecorder()
		err := s.Retrieve(w, httptest.NewRequest(http.MethodGet, "/", nil), imagesource.Retrieval{Path: p,
			PublicBase: "https://gw.example/f/wado/" + token, StudyUID: uid, PatientIDs: []pacskey.PatientKey{"FOLDER-1"}})
		if err != nil || w.Code != 200 {
			t.Fatalf("HTTP %d, %v", w.Code, err)
		}
		return w.Body.Bytes()
	}
	get(c, "tokA")
	cached := get(c, "tokB")
	if st := c.Stats(); st.Hits != 1 || st.Misses != 1 {
		t.Fatalf("stats %+v", st)
	}
	if direct := get(src, "tokB"); !bytes.Equal(cached, direct) {
		t.Fatalf("cached answer differs from the folder source's own:\n%s\n%s", cached, direct)
	}
	if strings.Contains(string(cached), "tokA") || !strings.Contains(string(cached), "https://gw.example/f/wado/tokB/") {
		t.Fatal("the cached answer does not carry the request's own study token")
	}
}

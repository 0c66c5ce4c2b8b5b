package integration

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/caddyserver/caddy/v2/caddytest"
)

// renderConfig fronts a real Orthanc through a proxy that counts the
// requests reaching it (/pacs with the default max_render_size, /small
// with 256), and the demo folder (/folder).
func renderConfig(pacsURL, user, password string) string {
	studies, _ := filepath.Abs(demoStudiesDir)
	key := base64.StdEncoding.EncodeToString(testKey)
	return fmt.Sprintf(testGlobals+`	grace_period 2s
}
http://localhost:9080 {
	handle_path /pacs/* {
		smart_imaging {
			authz mock {
				patient %[5]s mrn %[6]s
			}
			images dicomweb %[1]s {
				basic_auth %[2]s %[3]s
			}
			study_token_key %[4]s
		}
	}
	handle_path /small/* {
		smart_imaging {
			authz mock {
				patient %[5]s mrn %[6]s
			}
			images dicomweb %[1]s {
				basic_auth %[2]s %[3]s
			}
			study_token_key %[4]s
			max_render_size 256
		}
	}
	handle_path /folder/* {
		smart_imaging {
			authz mock {
				patient %[5]s mrn %[6]s
			}
			images folder %[7]s
			study_token_key %[4]s
		}
	}
}
`, pacsURL, user, password, key, demoPatient, demoMRN, studies)
}

// TestRenderBounds: a viewport past max_render_size, a rendering parameter
// given twice and a frame listed twice are refused with a 400
// OperationOutcome before the PACS hears of them; sizes within the bound
// render.
func TestRenderBounds(t *testing.T) {
	pacs, rows := startDemoPACS(t)
	pa := demoPatients(rows)[demoMRN]
	target, err := url.Parse(pacs.URL())
	if err != nil {
		t.Fatal(err)
	}
	var toPACS atomic.Int64
	proxy := httputil.NewSingleHostReverseProxy(target)
	counter := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		toPACS.Add(1)
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(counter.Close)

	tc := caddytest.NewTester(t)
	tc.InitServer(renderConfig(counter.URL+"/dicom-web", pacs.Username(), pacs.Password()), "caddyfile")
	client := newRawClient(2)
	defer client.CloseIdleConnections()

	// An instance of A's, and the multi-frame one.
	var single, multi demoRow
	for _, r := range pa.rows {
		if r.frames > 1 && multi.sop == "" {
			multi = r
		}
		if r.frames == 1 && single.sop == "" {
			single = r
		}
	}
	if single.sop == "" || multi.sop == "" {
		t.Fatalf("patient %s has no single-frame and multi-frame instance in the demo set", demoMRN)
	}
	address := func(route string, r demoRow) string {
		eps := legitSearch(t, client, base+"/"+route+"/fhir/ImagingStudy?patient="+demoPatient, "", pa.studies)
		return eps[r.study] + "/studies/" + r.study + "/series/" + r.series + "/instances/" + r.sop
	}
	get := func(u, accept string) (int, string, []byte) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, u, nil)
		req.Header.Set("Accept", accept)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", u, err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header.Get("Content-Type"), body
	}
	refused := func(t *testing.T, u, accept, mention string) {
		t.Helper()
		before := toPACS.Load()
		status, ctype, body := get(u, accept)
		var oo struct {
			ResourceType string
			Issue        []struct{ Code, Diagnostics string }
		}
		if status != http.StatusBadRequest || !strings.HasPrefix(ctype, "application/fhir+json") ||
			json.Unmarshal(body, &oo) != nil || oo.ResourceType != "OperationOutcome" || len(oo.Issue) == 0 {
			t.Fatalf("HTTP %d %s, want a 400 OperationOutcome: %.200s", status, ctype, body)
		}
		if !strings.Contains(oo.Issue[0].Diagnostics, mention) {
			t.Errorf("diagnostics %q do not mention %q", oo.Issue[0].Diagnostics, mention)
		}
		if n := toPACS.Load() - before; n != 0 {
			t.Errorf("%d requests reached the PACS for a refused request", n)
		}
	}
	rendered := func(t *testing.T, u string) {
		t.Helper()
		before := toPACS.Load()
		status, ctype, body := get(u, "image/jpeg")
		if status != http.StatusOK || ctype != "image/jpeg" || len(body) < 100 {
			t.Fatalf("HTTP %d %s (%d bytes), want a JPEG", status, ctype, len(body))
		}
		if toPACS.Load() == before && !strings.Contains(u, "/folder/") {
			t.Errorf("the rendering did not come from the PACS")
		}
	}

	pacsInst, smallInst, folderInst := address("pacs", single), address("small", single), address("folder", single)
	pacsMulti := address("pacs", multi)

	// The attack of the report: a 30000x30000 thumbnail cost Orthanc 13 s
	// and 743 MB. Through the folder source it is refused too.
	for name, u := range map[string]string{
		"a 30000x30000 thumbnail from the PACS":          pacsInst + "/thumbnail?viewport=30000,30000",
		"a 30000x30000 rendering from the folder":        folderInst + "/rendered?viewport=30000,30000",
		"a study thumbnail one pixel past the bound":     strings.SplitN(pacsInst, "/series/", 2)[0] + "/thumbnail?viewport=2049,2049",
		"a frame rendered one pixel past the bound":      pacsMulti + "/frames/2/rendered?viewport=16,2049",
		"256 is the bound of the small route":            smallInst + "/rendered?viewport=257,100",
		"a folder thumbnail past the bound":              folderInst + "/thumbnail?viewport=4096,4096",
		"a huge viewport after a small one (PACS: last)": pacsInst + "/thumbnail?viewport=16,16&viewport=30000,30000",
	} {
		mention := "viewport"
		if !strings.Contains(name, "after") {
			mention = "at most"
		}
		t.Run(name, func(t *testing.T) { refused(t, u, "image/jpeg", mention) })
	}
	t.Run("quality given twice", func(t *testing.T) { refused(t, pacsInst+"/rendered?quality=10&quality=100", "image/jpeg", "quality") })
	t.Run("two frames rendered at once", func(t *testing.T) { refused(t, pacsMulti+"/frames/1,2/rendered", "image/jpeg", "one frame") })
	// 64 copies of one 18 MB frame came out of one request.
	t.Run("one frame listed 64 times", func(t *testing.T) {
		refused(t, pacsMulti+"/frames/"+strings.Repeat("3,", 63)+"3", `multipart/related; type="application/octet-stream"`, "more than once")
	})
	t.Run("one frame listed twice, in the folder", func(t *testing.T) {
		refused(t, folderInst+"/frames/1,1", `multipart/related; type="application/octet-stream"`, "more than once")
	})

	t.Run("a 5 KB Accept header", func(t *testing.T) {
		refused(t, pacsInst, strings.Repeat(`multipart/related; type="application/dicom"; q=0.5, `, 100), "Accept")
		refused(t, folderInst, strings.Repeat(`multipart/related; type="application/dicom"; q=0.5, `, 100), "Accept")
	})

	t.Run("within the bound", func(t *testing.T) {
		rendered(t, pacsInst+"/thumbnail?viewport=2048,2048")
		rendered(t, pacsInst+"/rendered?viewport=64,64&quality=80&window=40,400,linear")
		rendered(t, pacsMulti+"/frames/2/rendered?viewport=32,32")
		rendered(t, smallInst+"/rendered?viewport=256,256")
		rendered(t, folderInst+"/rendered?viewport=2048,2048")
		rendered(t, pacsInst+"/thumbnail")
	})
	t.Run("distinct frames still come", func(t *testing.T) {
		status, ctype, _ := get(pacsMulti+"/frames/3,1,2", `multipart/related; type="application/octet-stream"`)
		if status != http.StatusOK || !strings.HasPrefix(ctype, "multipart/related") {
			t.Errorf("HTTP %d %s, want the three frames", status, ctype)
		}
	})
}

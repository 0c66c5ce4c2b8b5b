package integration

import (
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"

	"github.com/smart-imaging/smart_imaging/imagesource/dicomjson"
	"github.com/smart-imaging/smart_imaging/internal/dicomgen"
	"github.com/smart-imaging/smart_imaging/internal/orthanc"
)

// TestMetadataCacheAgainstOrthanc: with metadata_cache, a viewer's repeated
// metadata and searches are answered while the PACS hangs, If-None-Match
// gets 304, every answer carries its own study token, and a study that
// gains instances shows them once ttl has passed.
func TestMetadataCacheAgainstOrthanc(t *testing.T) {
	orthanc.SkipUnlessAvailable(t)
	ctx := context.Background()
	pacs, err := orthanc.Start(ctx, orthanc.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pacs.Stop() })
	const uid = "1.2.826.0.1.3680043.10.1082.88.1"
	spec := dicomgen.StudySpec{PatientID: "MCACHE-A", StudyUID: uid, Series: 2, InstancesPerSeries: 2, Rows: 16, Cols: 16}
	upload := func(spec dicomgen.StudySpec) {
		dir := t.TempDir()
		if _, err := dicomgen.WriteStudy(dir, spec); err != nil {
			t.Fatal(err)
		}
		if _, err := pacs.Upload(ctx, dir); err != nil {
			t.Fatal(err)
		}
	}
	upload(spec)

	key := base64.StdEncoding.EncodeToString(testKey)
	pacsHost := strings.TrimPrefix(pacs.URL(), "http://")
	dynBlock := func(cache string) string {
		return fmt.Sprintf(`dynamic_config {
				allow_pacs_hosts %s
				allow_ehr_hosts ehr.invalid
				allow_mock
				credentials %s basic %s %s
				%s
			}`, pacsHost, pacsHost, pacs.Username(), pacs.Password(), cache)
	}
	route := func(path, patient, mrn, cache string) string {
		return fmt.Sprintf(`
	handle_path /%s/* {
		smart_imaging {
			authz mock {
				patient %s mrn %s
			}
			images dicomweb %s {
				basic_auth %s %s
				qido_timeout 2s
				transport http {
					response_header_timeout 2s
				}
			}
			study_token_key %s
			%s
		}
	}`, path, patient, mrn, pacs.DICOMwebURL(), pacs.Username(), pacs.Password(), key, cache)
	}
	tc := caddytest.NewTester(t)
	tc.InitServer(testGlobals+"\tgrace_period 2s\n}\nhttp://localhost:9080 {"+
		route("long", "p-a", "MCACHE-A", "metadata_cache {\n size 16MiB\n ttl 1h\n }")+
		route("short", "p-a", "MCACHE-A", "metadata_cache {\n ttl 1s\n }")+
		route("other", "p-b", "MCACHE-B", "metadata_cache")+
		route("dyncache", "p-b", "MCACHE-B", dynBlock("metadata_cache"))+
		route("dynnone", "p-b", "MCACHE-B", "metadata_cache\n"+dynBlock(""))+
		"\n}\n", "caddyfile")

	fetch := func(url string, hdr ...string) (*http.Response, []byte) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		req.Header.Set("Accept", "application/dicom+json")
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := tc.Client.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, b
	}
	instances := func(body []byte) int {
		t.Helper()
		list, err := dicomjson.DecodeList(body)
		if err != nil {
			t.Fatalf("metadata: %v", err)
		}
		return len(list)
	}

	first := search(t, tc, base+"/long/fhir/ImagingStudy?patient=p-a")
	addr1 := first.endpoints[uid]
	addr2 := search(t, tc, base+"/long/fhir/ImagingStudy?patient=p-a").endpoints[uid]
	if addr1 == "" || addr1 == addr2 {
		t.Fatalf("study addresses %q, %q: want two different tokens", addr1, addr2)
	}
	resp1, body1 := fetch(addr1 + "/studies/" + uid + "/metadata")
	if resp1.StatusCode != 200 || instances(body1) != 4 {
		t.Fatalf("metadata: %d, %.200s", resp1.StatusCode, body1)
	}
	etag := resp1.Header.Get("ETag")

	// A tenant of each /dyn parent fetches the metadata once (PACS up).
	seg := dynSegment(jsonObj{"authz": jsonObj{"kind": "mock", "patient": "p-a", "mrn": []string{"MCACHE-A"}},
		"images": jsonObj{"kind": "dicomweb", "base_url": pacs.DICOMwebURL()}})
	dynAddr := map[string]string{}
	for _, parent := range []string{"dyncache", "dynnone"} {
		a := search(t, tc, base+"/"+parent+"/dyn/"+seg+"/fhir/ImagingStudy?patient=p-a").endpoints[uid]
		if resp, body := fetch(a + "/studies/" + uid + "/metadata"); resp.StatusCode != 200 || instances(body) != 4 {
			t.Fatalf("/%s tenant: %d %.200s", parent, resp.StatusCode, body)
		}
		dynAddr[parent] = a
	}
	dynCached := map[string]bool{}
	if etag == "" || resp1.Header.Get("Cache-Control") != "private, no-cache" {
		t.Fatalf("validators: ETag %q, Cache-Control %q", etag, resp1.Header.Get("Cache-Control"))
	}

	// The PACS hangs: what the viewer repeats still comes, from the cache.
	if err := pacs.Suspend(); err != nil {
		t.Fatal(err)
	}
	// The uncached tenant waits on the hung PACS: a client that gives up
	// after 3 s tells the two apart.
	probe := &http.Client{Timeout: 3 * time.Second}
	for parent, a := range dynAddr {
		req, _ := http.NewRequest(http.MethodGet, a+"/studies/"+uid+"/metadata", nil)
		req.Header.Set("Accept", "application/dicom+json")
		if resp, err := probe.Do(req); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			dynCached[parent] = resp.StatusCode == 200
		}
	}
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			if err := pacs.Resume(); err != nil {
				t.Fatal(err)
			}
		}
	}
	defer resume()
	resp2, body2 := fetch(addr2 + "/studies/" + uid + "/metadata")
	if resp2.StatusCode != 200 || instances(body2) != 4 {
		t.Fatalf("cached metadata while the PACS hangs: %d, %.200s", resp2.StatusCode, body2)
	}
	tok1, tok2 := addr1[strings.LastIndex(addr1, "/")+1:], addr2[strings.LastIndex(addr2, "/")+1:]
	if strings.Contains(string(body2), tok1) || !strings.Contains(string(body2), tok2) {
		t.Fatal("the cached metadata does not carry the request's own study token")
	}
	if strings.ReplaceAll(string(body2), tok2, tok1) != string(body1) {
		t.Fatal("the cached metadata differs from the PACS's answer in more than the study token")
	}
	if resp, body := fetch(addr1+"/studies/"+uid+"/metadata", "If-None-Match", etag); resp.StatusCode != http.StatusNotModified || len(body) != 0 {
		t.Fatalf("If-None-Match: %d with %d bytes, want 304", resp.StatusCode, len(body))
	}
	if again := search(t, tc, base+"/long/fhir/ImagingStudy?patient=p-a"); again.endpoints[uid] == "" {
		t.Fatal("the repeated search was not answered while the PACS hangs")
	}
	// /dyn tenants: a cache of their own only when the operator's
	// dynamic_config block says so (not from the parent route's).
	if !dynCached["dyncache"] || dynCached["dynnone"] {
		t.Fatalf("tenants served while the PACS hangs: %v; want only the one under dynamic_config { metadata_cache }", dynCached)
	}
	// Another route (another patient) has its own cache and its own checks:
	// the first route's study token does not open anything there.
	other := strings.Replace(addr1, "/long/", "/other/", 1)
	if resp, body := fetch(other + "/studies/" + uid + "/metadata"); resp.StatusCode < 400 || strings.Contains(string(body), "MCACHE-A") {
		t.Fatalf("a study token of /long on /other: %d %.200s", resp.StatusCode, body)
	}
	resume()

	// The study gains a series: the short-ttl route shows it once its ttl
	// has passed (waited for, with a bound), the long one still serves
	// what it holds.
	short := search(t, tc, base+"/short/fhir/ImagingStudy?patient=p-a").endpoints[uid]
	if _, body := fetch(short + "/studies/" + uid + "/metadata"); instances(body) != 4 {
		t.Fatal("short route: want 4 instances first")
	}
	spec.Series = 3
	upload(spec)
	deadline := time.Now().Add(15 * time.Second)
	for {
		_, body := fetch(short + "/studies/" + uid + "/metadata")
		if instances(body) == 6 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the new series never showed on the short-ttl route")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, body := fetch(addr1 + "/studies/" + uid + "/metadata"); instances(body) != 4 {
		t.Fatal("the long-ttl route should still serve its entry")
	}
}

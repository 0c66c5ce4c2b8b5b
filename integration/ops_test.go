package integration

import (
	"bufio"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddytest"
)

// opsMetricLine matches one sample of the module's request counter.
var opsMetricLine = regexp.MustCompile(`^caddy_smart_imaging_requests_total\{([^}]*)\} (\S+)$`)

var opsLabel = regexp.MustCompile(`(\w+)="((?:[^"\\]|\\.)*)"`)

// opsRequestCounts reads caddy_smart_imaging_requests_total from Caddy's
// admin /metrics, keyed by "route action outcome code".
func opsRequestCounts(t *testing.T) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://localhost:2999/metrics")
	if err != nil {
		t.Fatalf("GET admin /metrics: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET admin /metrics: status %d", resp.StatusCode)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		m := opsMetricLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		labels := map[string]string{}
		for _, l := range opsLabel.FindAllStringSubmatch(m[1], -1) {
			labels[l[1]] = l[2]
		}
		for _, want := range []string{"route", "action", "outcome"} {
			if _, ok := labels[want]; !ok {
				t.Errorf("sample %q has no %s label", sc.Text(), want)
			}
		}
		v, err := strconv.ParseFloat(m[2], 64)
		if err != nil {
			t.Fatalf("sample %q: %v", sc.Text(), err)
		}
		out[labels["route"]+" "+labels["action"]+" "+labels["outcome"]+" "+labels["code"]] = v
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// sumDeltas is how much all series grew from before to after.
func sumDeltas(before, after map[string]float64) float64 {
	var d float64
	for k, v := range after {
		d += v - before[k]
	}
	return d
}

func TestMetricsCountRequests(t *testing.T) {
	tc := caddytest.NewTester(t)
	tc.InitServer(demoConfig(), "caddyfile")

	// One request first, so every series used below exists in the scrape
	// (the collectors are per process: earlier tests may have counted
	// /open searches already). A request is counted when its status is
	// committed, so a client that has the answer finds it counted.
	initial := opsRequestCounts(t)["/open search ok 200"]
	getJSON(t, tc, base+"/open/fhir/ImagingStudy", http.StatusOK)
	before := opsRequestCounts(t)
	if before["/open search ok 200"] != initial+1 {
		t.Fatalf("after a search, /open search ok 200 went from %v to %v, want one more", initial, before["/open search ok 200"])
	}

	getJSON(t, tc, base+"/open/fhir/ImagingStudy", http.StatusOK)
	getJSON(t, tc, base+"/open/fhir/ImagingStudy?_count=1", http.StatusOK)
	getJSON(t, tc, base+"/hardcoded-patient/fhir/ImagingStudy?patient=someone-else", http.StatusForbidden)
	res := search(t, tc, base+"/hardcoded-patient/fhir/ImagingStudy?patient="+demoPatient)
	uid := keys(res.studies)[0]
	get(t, tc, res.endpoints[uid]+"/studies/"+uid+"/metadata", "application/dicom+json", http.StatusOK, "application/dicom+json")

	after := opsRequestCounts(t)
	want := map[string]float64{
		"/open search ok 200":                               2,
		"/hardcoded-patient search refused 403":             1,
		"/hardcoded-patient search ok 200":                  1,
		"/hardcoded-patient retrieve study metadata ok 200": 1,
	}
	for k, v := range after {
		if w, ok := want[k]; ok && v-before[k] != w {
			t.Errorf("%s grew by %v, want %v", k, v-before[k], w)
		}
	}
	for k := range want {
		if _, ok := after[k]; !ok {
			t.Errorf("no sample for %q in %v", k, after)
		}
	}
	if d := sumDeltas(before, after); d != 5 {
		t.Errorf("requests_total grew by %v over all series, want exactly the 5 requests made", d)
	}

	// The collectors outlive a config reload: counts go on, not from zero.
	tc.InitServer(corsConfig(), "caddyfile")
	getJSON(t, tc, base+"/open/fhir/ImagingStudy", http.StatusOK)
	k := "/open search ok 200"
	reloaded := opsRequestCounts(t)
	if reloaded[k] != after[k]+1 {
		t.Errorf("after a reload %s = %v, want %v", k, reloaded[k], after[k]+1)
	}
}

func TestHealth(t *testing.T) {
	tc := caddytest.NewTester(t)
	tc.InitServer(demoConfig(), "caddyfile")

	for _, route := range []string{"/open", "/hardcoded-patient"} {
		t.Run(route, func(t *testing.T) {
			oo, resp := getJSON(t, tc, base+route+"/health/live", http.StatusOK)
			if oo["resourceType"] != "OperationOutcome" {
				t.Errorf("live: %v", oo)
			}
			oo, resp = getJSON(t, tc, base+route+"/health/ready", http.StatusOK)
			if oo["resourceType"] != "OperationOutcome" {
				t.Fatalf("ready: %v", oo)
			}
			if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/fhir+json") {
				t.Errorf("ready Content-Type %q", ct)
			}
			issues, _ := oo["issue"].([]any)
			var text []string
			for _, is := range issues {
				im := is.(map[string]any)
				if sev := im["severity"]; sev != "information" {
					t.Errorf("ready with a %v issue: %v", sev, im)
				}
				d, _ := im["diagnostics"].(string)
				text = append(text, d)
			}
			if all := strings.Join(text, "; "); !strings.Contains(all, "study token key: ok") || !strings.Contains(all, "image source") {
				t.Errorf("ready issues %q do not report the key and the image source", all)
			}
			if b, _ := json.Marshal(oo); strings.Contains(string(b), base64.StdEncoding.EncodeToString(testKey)) {
				t.Error("ready answer holds the study token key")
			}
		})
	}
}

// opsErrorsConfig serves the patient route on two sites of one server:
// localhost has handle_errors, 127.0.0.1 has none.
func opsErrorsConfig() string {
	studies, _ := filepath.Abs("../examples/demo/studies")
	route := fmt.Sprintf(`handle_path /hardcoded-patient/* {
		smart_imaging {
			authz mock {
				patient %s mrn %s
			}
			images folder %s
			study_token_key %s
		}
	}`, demoPatient, demoMRN, studies, base64.StdEncoding.EncodeToString(testKey))
	return fmt.Sprintf(testGlobals+`	grace_period 2s
}
http://localhost:9080 {
	%[1]s
	handle_errors {
		respond "custom {err.status_code}"
	}
}
http://127.0.0.1:9080 {
	%[1]s
}
`, route)
}

func TestOpsHandleErrors(t *testing.T) {
	tc := caddytest.NewTester(t)
	tc.InitServer(opsErrorsConfig(), "caddyfile")
	refused := "/hardcoded-patient/fhir/ImagingStudy?patient=someone-else"

	t.Run("site with handle_errors", func(t *testing.T) {
		resp, body := corsDo(t, tc, http.MethodGet, "http://localhost:9080"+refused)
		if resp.StatusCode != http.StatusForbidden || body != "custom 403" {
			t.Errorf("status %d body %q; want 403 %q", resp.StatusCode, body, "custom 403")
		}
		resp, body = corsDo(t, tc, http.MethodGet, "http://localhost:9080/hardcoded-patient/fhir/Nope")
		if resp.StatusCode != http.StatusNotFound || body != "custom 404" {
			t.Errorf("status %d body %q; want 404 %q", resp.StatusCode, body, "custom 404")
		}
	})
	t.Run("site without handle_errors", func(t *testing.T) {
		resp, body := corsDo(t, tc, http.MethodGet, "http://127.0.0.1:9080"+refused)
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, `"OperationOutcome"`) ||
			!strings.HasPrefix(resp.Header.Get("Content-Type"), "application/fhir+json") {
			t.Errorf("status %d, Content-Type %q, body %q; want 403 with an OperationOutcome", resp.StatusCode, resp.Header.Get("Content-Type"), body)
		}
	})
	t.Run("success is untouched", func(t *testing.T) {
		resp, body := corsDo(t, tc, http.MethodGet, "http://localhost:9080/hardcoded-patient/fhir/ImagingStudy?patient="+demoPatient)
		if resp.StatusCode != http.StatusOK || !strings.Contains(body, `"searchset"`) {
			t.Errorf("status %d body %.200q", resp.StatusCode, body)
		}
	})
}

// opsSite wraps smart_imaging options in a minimal Caddyfile.
func opsSite(options string) string {
	return testGlobals + `	grace_period 2s
}
http://localhost:9080 {
	handle_path /t/* {
		smart_imaging {
` + options + `
		}
	}
}
`
}

func TestConfigAdaptErrors(t *testing.T) {
	studies, _ := filepath.Abs("../examples/demo/studies")
	mock := "authz mock {\n\tpatient p1 mrn M1\n}\n"
	folder := "images folder " + studies + "\n"
	cases := []struct {
		name, options string
		want          []string
	}{
		{"unknown subdirective", mock + folder + "frobnicate on", []string{"smart_imaging", "frobnicate", "known:"}},
		{"unknown authz mock option", "authz mock {\n\tpateint p1\n}\n" + folder, []string{"authz mock", "pateint", "known:"}},
		{"unknown images folder option", mock + "images folder " + studies + " {\n\tlookup_mode all-studies\n}", []string{"images folder", "lookup_mode", "known:"}},
		{"unknown authz kind", "authz magic\n" + folder, []string{"authz magic"}},
		{"study_token_ttl garbage", mock + folder + "study_token_ttl soon", []string{"study_token_ttl", "soon"}},
		{"cors not an origin", mock + folder + "cors not-an-origin", []string{"cors", "not-an-origin", "scheme://host"}},
		{"cors with a path", mock + folder + "cors https://viewer.example.org/app", []string{"cors", "https://viewer.example.org/app"}},
		{"lookup unknown mode", mock + "images folder " + studies + " {\n\tlookup everything\n}", []string{"lookup", "everything", "studies-by-mrn", "all-studies"}},
		{"base_url without argument", mock + folder + "base_url", []string{"argument"}},
	}
	adapter := caddyconfig.GetAdapter("caddyfile")
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := adapter.Adapt([]byte(opsSite(tt.options)), map[string]any{"filename": "Caddyfile"})
			if err == nil {
				t.Fatalf("adapt succeeded; want an error for:\n%s", tt.options)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if !strings.Contains(err.Error(), "Caddyfile:") {
				t.Errorf("error %q does not name the file and line", err)
			}
		})
	}
}

// opsValidate runs what `caddy validate` runs: adapt, then provision every
// module without starting anything.
func opsValidate(t *testing.T, caddyfile string) error {
	t.Helper()
	js, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		t.Fatalf("adapt: %v", err)
	}
	var cfg caddy.Config
	if err := json.Unmarshal(js, &cfg); err != nil {
		t.Fatal(err)
	}
	return caddy.Validate(&cfg)
}

func TestConfigProvisionErrors(t *testing.T) {
	studies, _ := filepath.Abs("../examples/demo/studies")
	missing := filepath.Join(t.TempDir(), "no-such-dir")
	mock := "authz mock {\n\tpatient p1 mrn M1\n}\n"
	folder := "images folder " + studies + "\n"
	cases := []struct {
		name, options string
		want          []string
	}{
		{"study_token_key too short", mock + folder + "study_token_key " + base64.StdEncoding.EncodeToString([]byte("short")),
			[]string{"study_token_key", "32 bytes"}},
		{"study_token_key not base64", mock + folder + "study_token_key not*base64",
			[]string{"study_token_key", "base64"}},
		{"base_url not absolute", mock + folder + "base_url /ehr",
			[]string{"base_url", "/ehr", "absolute", "https://"}},
		{"base_url other scheme", mock + folder + "base_url ftp://imaging.example.org",
			[]string{"base_url", "absolute"}},
		{"all-studies with a patient-bound mock", mock + "images folder " + studies + " {\n\tlookup all-studies\n}",
			[]string{"all-studies", "disable_authz_checks", "studies-by-mrn"}},
		{"images folder missing dir", mock + "images folder " + missing,
			[]string{"images folder", missing, "existing, readable directory"}},
		{"study_token_ttl too long", mock + folder + "study_token_ttl 48h",
			[]string{"study_token_ttl", "24h"}},
		{"mock without patient", "authz mock {\n\tmrn M1\n}\n" + folder,
			[]string{"authz mock", "patient", "disable_authz_checks"}},
	}
	// Load a good config first, so a refused load is seen to leave it.
	tc := caddytest.NewTester(t)
	tc.InitServer(demoConfig(), "caddyfile")
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			cf := opsSite(tt.options)
			err := opsValidate(t, cf)
			if err == nil {
				t.Fatalf("caddy validate accepted:\n%s", tt.options)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("validate error %q does not mention %q", err, w)
				}
			}
			// The running server refuses the same config with the same words.
			for _, w := range tt.want {
				caddytest.AssertLoadError(t, cf, "caddyfile", w)
			}
		})
	}
	t.Run("the good config still serves", func(t *testing.T) {
		getJSON(t, tc, base+"/open/fhir/ImagingStudy?_summary=count", http.StatusOK)
	})
}

// opsAuditConfig is the demo config with Caddy's default log, and the
// site's access log, written as JSON to a file.
func opsAuditConfig(logFile string) string {
	cfg := strings.Replace(demoConfig(), "\tgrace_period 2s\n", "\tgrace_period 2s\n\tlog {\n\t\toutput file "+logFile+"\n\t\tformat json\n\t\tlevel INFO\n\t}\n", 1)
	return strings.Replace(cfg, "http://localhost:9080 {\n", "http://localhost:9080 {\n\tlog {\n\t\toutput file "+logFile+"\n\t\tformat json\n\t}\n", 1)
}

// opsAuditLines returns the audit lines in the log file once it holds at
// least n of them and n access log lines, waiting at most 5 s: lines are
// written when the handler returns, which can be just after the client
// has read the answer.
func opsAuditLines(t *testing.T, logFile string, n int) ([]map[string]any, string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		data, err := os.ReadFile(logFile)
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		var lines []map[string]any
		access := 0
		for _, l := range strings.Split(string(data), "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(l), &m) != nil {
				continue
			}
			if m["logger"] == "http.handlers.smart_imaging.audit" {
				lines = append(lines, m)
			} else if m["msg"] == "handled request" {
				access++
			}
		}
		if len(lines) >= n && access >= n {
			return lines, string(data)
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 5 s the log holds %d audit lines, want %d:\n%s", len(lines), n, data)
		}
		<-tick.C
	}
}

func TestOpsAuditLog(t *testing.T) {
	logFile := filepath.Join(t.TempDir(), "caddy.log")
	tc := caddytest.NewTester(t)
	tc.InitServer(opsAuditConfig(logFile), "caddyfile")
	// Put the default log back for the tests that follow.
	t.Cleanup(func() { tc.InitServer(demoConfig(), "caddyfile") })

	const bearer = "eyJhbGciOiJub25lIn0.c2VjcmV0LWFjY2Vzcy10b2tlbg.SIGNATURE-xyz"
	do := func(u string, status int, accept string) string {
		t.Helper()
		resp, body := corsDo(t, tc, http.MethodGet, u, "Authorization", "Bearer "+bearer, "Accept", accept)
		if resp.StatusCode != status {
			t.Fatalf("GET %s: status %d, want %d: %.200s", u, resp.StatusCode, status, body)
		}
		return body
	}
	body := do(base+"/hardcoded-patient/fhir/ImagingStudy?patient="+demoPatient, http.StatusOK, "application/fhir+json")
	var b struct {
		Entry []struct {
			Resource struct {
				ResourceType string `json:"resourceType"`
				Address      string `json:"address"`
			} `json:"resource"`
		} `json:"entry"`
	}
	if err := json.Unmarshal([]byte(body), &b); err != nil {
		t.Fatal(err)
	}
	var addr string
	for _, e := range b.Entry {
		if e.Resource.ResourceType == "Endpoint" {
			addr = e.Resource.Address
			break
		}
	}
	if addr == "" {
		t.Fatal("no Endpoint in the search answer")
	}
	studyToken := addr[strings.LastIndex(addr, "/")+1:]
	do(base+"/hardcoded-patient/fhir/ImagingStudy?patient=someone-else", http.StatusForbidden, "application/fhir+json")
	do(addr+"/studies/1.2.3", http.StatusForbidden, `multipart/related; type="application/dicom"`)

	lines, all := opsAuditLines(t, logFile, 3)
	if strings.Contains(all, bearer) || strings.Contains(all, "c2VjcmV0LWFjY2Vzcy10b2tlbg") {
		t.Errorf("the log holds the bearer token:\n%s", all)
	}
	for _, l := range lines {
		raw, _ := json.Marshal(l)
		if strings.Contains(string(raw), studyToken) {
			t.Errorf("audit line holds the study token: %s", raw)
		}
	}
	type want struct {
		action  string
		allowed bool
		status  float64
	}
	wants := []want{{"search", true, 200}, {"search", false, 403}, {"retrieve", false, 403}}
	for i, w := range wants {
		l := lines[i]
		if l["msg"] != "decision" || l["action"] != w.action || l["allowed"] != w.allowed || l["status"] != w.status {
			t.Errorf("audit line %d: %v; want action %s allowed %v status %v", i, l, w.action, w.allowed, w.status)
		}
		if l["route"] != "/hardcoded-patient" || l["patient"] != demoPatient {
			t.Errorf("audit line %d: route %v patient %v", i, l["route"], l["patient"])
		}
		if h, _ := l["token_hash"].(string); len(h) != 12 {
			t.Errorf("audit line %d: token_hash %q, want 12 hex digits", i, h)
		}
		if _, ok := l["duration"]; !ok {
			t.Errorf("audit line %d has no duration", i)
		}
		if !w.allowed {
			if r, _ := l["reason"].(string); r == "" {
				t.Errorf("refusal line %d has no reason", i)
			}
		}
	}
	// Caddy's access log shows who asked, through {http.auth.user.id}.
	access := 0
	for _, l := range strings.Split(all, "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) != nil || m["msg"] != "handled request" {
			continue
		}
		access++
		if m["user_id"] != "mock" {
			t.Errorf("access log line without user_id mock: %s", l)
		}
	}
	if access < 3 {
		t.Errorf("the access log has %d lines, want one per request:\n%s", access, all)
	}
	if n, _ := lines[0]["bytes_sent"].(float64); int(n) != len(body) {
		t.Errorf("search line bytes_sent %v, want the %d bytes sent", lines[0]["bytes_sent"], len(body))
	}
}

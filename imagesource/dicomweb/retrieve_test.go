package dicomweb

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/smart-imaging/smart_imaging/imagesource"
	"github.com/smart-imaging/smart_imaging/imagesource/wadopath"
)

// rpProxy is a Proxy built on net/http/httputil.ReverseProxy, standing in
// for Caddy's reverseproxy.Handler (which needs a running Caddy). Like
// Caddy's, it panics with http.ErrAbortHandler when the upstream body
// breaks after the headers went out.
type rpProxy struct {
	target    *url.URL
	transport http.RoundTripper
}

func (p *rpProxy) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	var perr error
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme = p.target.Scheme
			pr.Out.URL.Host = p.target.Host
			pr.Out.Host = pr.In.Host
		},
		Transport:     p.transport,
		FlushInterval: -1,
		ErrorHandler:  func(_ http.ResponseWriter, _ *http.Request, err error) { perr = err },
		ErrorLog:      nil,
	}
	rp.ServeHTTP(w, r)
	return perr
}

const publicBase = "https://gateway.example.org/smart-imaging/wado/TOKEN-abc" // longer than the PACS base

// upstreamRecorder is a fake PACS that records what it received.
type upstreamRecorder struct {
	mu   sync.Mutex
	reqs []*http.Request
	h    http.HandlerFunc
}

func (u *upstreamRecorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	u.mu.Lock()
	u.reqs = append(u.reqs, r.Clone(context.Background()))
	u.mu.Unlock()
	u.h(w, r)
}

func (u *upstreamRecorder) last(t *testing.T) *http.Request {
	t.Helper()
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.reqs) == 0 {
		t.Fatal("the PACS got no request")
	}
	return u.reqs[len(u.reqs)-1]
}

// retrieveSetup starts a fake PACS running h and returns a Source that
// proxies to it.
func retrieveSetup(t *testing.T, h http.HandlerFunc, transport http.RoundTripper) (*Source, *upstreamRecorder, *httptest.Server) {
	t.Helper()
	up := &upstreamRecorder{h: h}
	srv := httptest.NewServer(up)
	t.Cleanup(srv.Close)
	target, _ := url.Parse(srv.URL)
	if transport == nil {
		transport = srv.Client().Transport
	}
	s, err := New(Config{BaseURL: srv.URL + "/dicom-web", Username: "gw", Password: "pacs-pw"},
		&rpProxy{target: target, transport: transport}, srv.Client(), nil)
	if err != nil {
		t.Fatal(err)
	}
	return s, up, srv
}

// gateway serves Retrieve the way the Caddy module does: the path after
// the host is the WADO-RS path; an *imagesource.Error becomes a plain
// error answer; any other error aborts the connection.
func gateway(t *testing.T, s *Source) *httptest.Server {
	t.Helper()
	return gatewayAs(t, s, []string{testPatient})
}

// gatewayAs is gateway for a caller whose PACS keys are patients (nil: an
// unrestricted route, any patient).
func gatewayAs(t *testing.T, s *Source, patients []string) *httptest.Server {
	t.Helper()
	gw := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, err := wadopath.Parse(strings.TrimPrefix(r.URL.EscapedPath(), "/"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		err = s.Retrieve(w, r, imagesource.Retrieval{Path: p, PublicBase: publicBase, StudyUID: p.StudyUID, PatientIDs: toKeys(patients), Unrestricted: patients == nil})
		if err == nil {
			return
		}
		if e, ok := imagesource.AsError(err); ok {
			if e.RetryAfter > 0 {
				w.Header().Set("Retry-After", strconv.Itoa(int(e.RetryAfter/time.Second)))
			}
			http.Error(w, e.Message, e.Status)
			return
		}
		panic(http.ErrAbortHandler)
	}))
	t.Cleanup(gw.Close)
	return gw
}

func mustParse(t *testing.T, p string) wadopath.Path {
	t.Helper()
	wp, err := wadopath.Parse(p)
	if err != nil {
		t.Fatal(err)
	}
	return wp
}

func TestRetrieveBuildsTheUpstreamRequest(t *testing.T) {
	s, up, srv := retrieveSetup(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "image/png")
		w.Write([]byte("PNG"))
	}, nil)
	gw := gateway(t, s)

	req, _ := http.NewRequest(http.MethodGet, gw.URL+"/studies/1.2/series/3.4/instances/5.6/rendered?quality=90&viewport=64,64&window=40,400,linear&patient=x&PatientID=*&includefield=all&accept=text/html", nil)
	req.Header.Set("Authorization", "Bearer client-access-token")
	req.Header.Set("Cookie", "session=abc")
	req.Header.Set("Forwarded", "host=evil.example;proto=https")
	req.Header.Set("X-Forwarded-Host", "evil.example")
	req.Header.Set("Accept", "image/png")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "PNG" || resp.Header.Get("Content-Type") != "image/png" {
		t.Fatalf("client got %d %q %q", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	if cc := resp.Header.Get("Cache-Control"); cc != "private" {
		t.Errorf("Cache-Control = %q, want private (the PACS sent none)", cc)
	}

	got := up.last(t)
	if got.URL.Path != "/dicom-web/studies/1.2/series/3.4/instances/5.6/rendered" {
		t.Errorf("upstream path = %q", got.URL.Path)
	}
	q := got.URL.Query()
	if len(q) != 3 || q.Get("quality") != "90" || q.Get("viewport") != "64,64" || q.Get("window") != "40,400,linear" {
		t.Errorf("upstream query = %q, want only quality, viewport and window", got.URL.RawQuery)
	}
	if a := got.Header.Get("Authorization"); a != "Basic Z3c6cGFjcy1wdw==" {
		t.Errorf("upstream Authorization = %q, want the configured basic credentials", a)
	}
	for _, h := range []string{"Cookie", "Forwarded"} {
		if v := got.Header.Get(h); v != "" {
			t.Errorf("client header %s reached the PACS: %q", h, v)
		}
	}
	if v := got.Header.Get("X-Forwarded-Host"); strings.Contains(v, "evil") {
		t.Errorf("client X-Forwarded-Host reached the PACS: %q", v)
	}
	if got.Header.Get("Accept") != "image/png" {
		t.Errorf("upstream Accept = %q", got.Header.Get("Accept"))
	}
	if got.Host != strings.TrimPrefix(srv.URL, "http://") {
		t.Errorf("upstream Host = %q, want the PACS host", got.Host)
	}

	// Other resources get no query parameters at all.
	resp, err = http.Get(gw.URL + "/studies/1.2/series/3.4?quality=90&PatientID=*")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if rq := up.last(t).URL.RawQuery; rq != "" {
		t.Errorf("series retrieve sent query %q upstream", rq)
	}
}

func TestRetrieveRewritesMetadataURLs(t *testing.T) {
	var pacsBase string
	s, up, _ := retrieveSetup(t, func(w http.ResponseWriter, r *http.Request) {
		// Like Orthanc: absolute URLs built from the Host header received.
		pacsBase = "http://" + r.Host + "/dicom-web"
		meta := fmt.Sprintf(`[{"00081190":{"vr":"UR","Value":["%[1]s/studies/1.2"]},"00100020":{"vr":"LO","Value":["%[2]s"]},`+
			`"0020000D":{"vr":"UI","Value":["1.2"]},`+
			`"7FE00010":{"vr":"OW","BulkDataURI":"%[1]s/studies/1.2/series/3.4/instances/5.6/bulk/7fe00010"}}]`, pacsBase, testPatient)
		w.Header().Set("Content-Type", "application/dicom+json")
		w.Header().Set("Content-Length", strconv.Itoa(len(meta)))
		w.Header().Set("Content-Location", pacsBase+"/studies/1.2/metadata")
		w.Header().Set("Set-Cookie", "pacs-session=1")
		w.Write([]byte(meta))
	}, nil)
	gw := gateway(t, s)
	resp, err := http.Get(gw.URL + "/studies/1.2/metadata")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("client got %d, %v", resp.StatusCode, err)
	}
	if strings.Contains(string(body), pacsBase) || strings.Contains(string(body), "dicom-web") {
		t.Errorf("PACS URL left in the body: %s", body)
	}
	var list []map[string]map[string]any
	if err := json.Unmarshal(body, &list); err != nil {
		t.Fatalf("rewritten body is not JSON: %v\n%s", err, body)
	}
	if got := list[0]["7FE00010"]["BulkDataURI"]; got != publicBase+"/studies/1.2/series/3.4/instances/5.6/bulk/7fe00010" {
		t.Errorf("BulkDataURI = %v", got)
	}
	if got := list[0]["00081190"]["Value"].([]any)[0]; got != publicBase+"/studies/1.2" {
		t.Errorf("RetrieveURL = %v", got)
	}
	if got := resp.Header.Get("Content-Location"); got != publicBase+"/studies/1.2/metadata" {
		t.Errorf("Content-Location = %q", got)
	}
	if resp.Header.Get("Set-Cookie") != "" {
		t.Error("the PACS's cookie reached the client")
	}
	if got := up.last(t).Header.Get("Accept"); got != "application/dicom+json" {
		t.Errorf("metadata Accept upstream = %q", got)
	}
}

func TestRetrieveRewritesFramePartHeaders(t *testing.T) {
	var pacsBase string
	pixel := []byte("\x00\x01http://PLACEHOLDER/dicom-web/\xff\xfe")
	s, _, _ := retrieveSetup(t, func(w http.ResponseWriter, r *http.Request) {
		pacsBase = "http://" + r.Host + "/dicom-web"
		payload := []byte(strings.ReplaceAll(string(pixel), "http://PLACEHOLDER/dicom-web", pacsBase))
		w.Header().Set("Content-Type", `multipart/related; type="application/octet-stream"; boundary=BOUNDARY`)
		for i := 1; i <= 2; i++ {
			fmt.Fprintf(w, "--BOUNDARY\r\nContent-Type: application/octet-stream\r\nContent-Location: %s/studies/1.2/series/3.4/instances/5.6/frames/%d\r\nContent-Length: %d\r\n\r\n", pacsBase, i, len(payload))
			w.Write(payload)
			w.Write([]byte("\r\n"))
			w.(http.Flusher).Flush()
		}
		w.Write([]byte("--BOUNDARY--\r\n"))
	}, nil)
	gw := gateway(t, s)
	resp, err := http.Get(gw.URL + "/studies/1.2/series/3.4/instances/5.6/frames/1,2")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	_, params, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	mr := multipart.NewReader(resp.Body, params["boundary"])
	for i := 1; ; i++ {
		p, err := mr.NextPart()
		if err == io.EOF {
			if i != 3 {
				t.Errorf("%d parts, want 2", i-1)
			}
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if got, want := p.Header.Get("Content-Location"), fmt.Sprintf("%s/studies/1.2/series/3.4/instances/5.6/frames/%d", publicBase, i); got != want {
			t.Errorf("part %d Content-Location = %q, want %q", i, got, want)
		}
		data, _ := io.ReadAll(p)
		if want := strings.ReplaceAll(string(pixel), "http://PLACEHOLDER/dicom-web", pacsBase); string(data) != want {
			t.Errorf("part %d content changed: %q", i, data)
		}
	}
}

func TestRetrieveMetadataAccept(t *testing.T) {
	s, up, _ := retrieveSetup(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/dicom+json")
		w.Write([]byte("[]"))
	}, nil)
	rec := httptest.NewRecorder()
	r := httptest.NewRequest(http.MethodGet, "/studies/1.2/metadata", nil)
	r.Header.Set("Accept", `multipart/related; type="application/dicom+xml"`)
	err := s.Retrieve(rec, r, imagesource.Retrieval{Path: mustParse(t, "studies/1.2/metadata"), PublicBase: publicBase})
	if e, ok := imagesource.AsError(err); !ok || e.Status != http.StatusNotAcceptable {
		t.Fatalf("XML metadata: err = %v, want 406", err)
	}
	if len(up.reqs) != 0 {
		t.Error("the PACS was asked for XML metadata")
	}
	for _, accept := range []string{"", "*/*", "application/json", "application/dicom+json; q=0.5, */*"} {
		r := httptest.NewRequest(http.MethodGet, "/studies/1.2/metadata", nil)
		if accept != "" {
			r.Header.Set("Accept", accept)
		}
		rec := httptest.NewRecorder()
		if err := s.Retrieve(rec, r, imagesource.Retrieval{Path: mustParse(t, "studies/1.2/metadata"), PublicBase: publicBase}); err != nil {
			t.Errorf("Accept %q: %v", accept, err)
		}
		if got := up.last(t).Header.Get("Accept"); got != "application/dicom+json" {
			t.Errorf("Accept %q: upstream Accept = %q", accept, got)
		}
	}
}

func TestRetrieveObjectsAccept(t *testing.T) {
	s, up, _ := retrieveSetup(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", `multipart/related; type="application/dicom"; boundary=B`)
		w.Write([]byte("--B--\r\n"))
	}, nil)
	retrieve := func(path, accept string) error {
		r := httptest.NewRequest(http.MethodGet, "/"+path, nil)
		if accept != "" {
			r.Header.Set("Accept", accept)
		}
		return s.Retrieve(httptest.NewRecorder(), r, imagesource.Retrieval{Path: mustParse(t, path), PublicBase: publicBase})
	}
	// Nothing a study, series or instance retrieve can answer: 406, and
	// the PACS is not asked (Orthanc would say 400).
	for _, accept := range []string{"application/zip", "application/json, text/html", `multipart/related; type="application/dicom"; q=0, application/zip`} {
		err := retrieve("studies/1.2", accept)
		if e, ok := imagesource.AsError(err); !ok || e.Status != http.StatusNotAcceptable {
			t.Errorf("Accept %q: err = %v, want 406", accept, err)
		}
	}
	if len(up.reqs) != 0 {
		t.Errorf("the PACS was asked %d times for answers the client does not accept", len(up.reqs))
	}
	// DICOM objects, wildcards, an unquoted type and a range the gateway
	// cannot parse pass through unchanged.
	for _, accept := range []string{"", "*/*", `multipart/related; type="application/dicom"; transfer-syntax=*`,
		"multipart/related; type=application/dicom", "application/zip, multipart/related", "application/dicom, multipart/related", "not a media type"} {
		if err := retrieve("studies/1.2/series/1.3/instances/1.4", accept); err != nil {
			t.Errorf("Accept %q: %v", accept, err)
			continue
		}
		if got := up.last(t).Header.Get("Accept"); got != accept {
			t.Errorf("Accept %q: upstream Accept = %q", accept, got)
		}
	}
	// Other resources keep their own rules: frames pass through.
	if err := retrieve("studies/1.2/series/1.3/instances/1.4/frames/1", "application/zip"); err != nil {
		if e, ok := imagesource.AsError(err); ok && e.Status == http.StatusNotAcceptable {
			t.Errorf("frames with Accept application/zip refused by the gateway: %v", err)
		}
	}
}

func TestRetrieveKeepsAnswersPrivate(t *testing.T) {
	for pacs, want := range map[string]string{
		"public, max-age=3600": "private",
		"max-age=60, private":  "max-age=60, private",
		"no-store":             "no-store",
	} {
		s, _, _ := retrieveSetup(t, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Cache-Control", pacs)
			w.Header().Set("Content-Type", "image/png")
			w.Write([]byte("PNG"))
		}, nil)
		resp, err := http.Get(gateway(t, s).URL + "/studies/1.2/series/3.4/instances/5.6/rendered")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if got := resp.Header.Get("Cache-Control"); got != want {
			t.Errorf("PACS Cache-Control %q: client got %q, want %q", pacs, got, want)
		}
	}
}

func TestRetrieveUpstreamErrorStatuses(t *testing.T) {
	const secret = "SECRET-PACS-BODY /dicom-web/internal"
	cases := []struct {
		upstream   int
		retryAfter string
		body       string
		want       int
		msg        string
		wantRetry  time.Duration
	}{
		{400, "", `{"Details":"expecting 'Accept: multipart/related'","Uri":"` + secret + `"}`, 400, "expecting 'Accept: multipart/related'", 0},
		{404, "", `{"HttpError":"Not Found","Uri":"` + secret + `"}`, 404, "has no such study", 0},
		{406, "", secret, 406, "media type", 0},
		{401, "", secret, 502, "refused the gateway's credentials (HTTP 401)", 0},
		{403, "", secret, 502, "refused the gateway's credentials (HTTP 403)", 0},
		{500, "", secret, 502, "HTTP 500", 0},
		{502, "", secret, 502, "HTTP 502", 0},
		{503, "9", secret, 503, "unavailable", 9 * time.Second},
		{503, "", secret, 503, "unavailable", DefaultRetryAfter},
		{405, "", secret, 502, "HTTP 405", 0},
	}
	for _, tc := range cases {
		t.Run(strconv.Itoa(tc.upstream), func(t *testing.T) {
			s, _, _ := retrieveSetup(t, func(w http.ResponseWriter, r *http.Request) {
				if tc.retryAfter != "" {
					w.Header().Set("Retry-After", tc.retryAfter)
				}
				w.Header().Set("WWW-Authenticate", `Basic realm="Orthanc Secure Area"`)
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(tc.upstream)
				w.Write([]byte(tc.body))
			}, nil)
			rec := httptest.NewRecorder()
			r := httptest.NewRequest(http.MethodGet, "/x", nil)
			err := s.Retrieve(rec, r, imagesource.Retrieval{Path: mustParse(t, "studies/1.2/series/3.4"), PublicBase: publicBase})
			e, ok := imagesource.AsError(err)
			if !ok {
				t.Fatalf("err = %v, want an imagesource.Error", err)
			}
			if e.Status != tc.want || !strings.Contains(e.Message, tc.msg) || e.RetryAfter != tc.wantRetry {
				t.Errorf("got %d %q retry %v; want %d with %q, retry %v", e.Status, e.Message, e.RetryAfter, tc.want, tc.msg, tc.wantRetry)
			}
			if strings.Contains(e.Message, "SECRET") || strings.Contains(e.Message, "pacs-pw") {
				t.Errorf("message %q passes the PACS body or the password on", e.Message)
			}
			if rec.Body.Len() != 0 || len(rec.Header()) != 0 || rec.Flushed {
				t.Errorf("something reached the client before the error: headers %v, body %q", rec.Header(), rec.Body.String())
			}
		})
	}
}

func TestRetrieveUpstreamDown(t *testing.T) {
	s, _, srv := retrieveSetup(t, func(w http.ResponseWriter, r *http.Request) {}, nil)
	srv.Close()
	rec := httptest.NewRecorder()
	err := s.Retrieve(rec, httptest.NewRequest(http.MethodGet, "/x", nil),
		imagesource.Retrieval{Path: mustParse(t, "studies/1.2"), PublicBase: publicBase})
	e, ok := imagesource.AsError(err)
	if !ok || e.Status != http.StatusBadGateway || !strings.Contains(e.Message, "connection refused") {
		t.Fatalf("err = %v, want a 502 naming the refused connection", err)
	}
}

func TestRetrieveUpstreamSlow(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.ResponseHeaderTimeout = 100 * time.Millisecond
	s, _, _ := retrieveSetup(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}, transport)
	rec := httptest.NewRecorder()
	err := s.Retrieve(rec, httptest.NewRequest(http.MethodGet, "/x", nil),
		imagesource.Retrieval{Path: mustParse(t, "studies/1.2"), PublicBase: publicBase})
	if e, ok := imagesource.AsError(err); !ok || e.Status != http.StatusGatewayTimeout {
		t.Fatalf("err = %v, want 504", err)
	}
}

// rawUpstream answers with raw bytes on the TCP connection and closes it,
// like Orthanc's Connection: close study retrieves (or a PACS that dies).
func rawUpstream(head, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		conn, buf, err := http.NewResponseController(w).Hijack()
		if err != nil {
			panic(err)
		}
		defer conn.Close()
		buf.WriteString(head + "\r\n" + body)
		buf.Flush()
	}
}

func TestRetrieveBrokenStreamReachesTheClientBroken(t *testing.T) {
	const mpHead = "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: multipart/related; type=\"application/dicom\"; boundary=BB\r\n"
	obj := string(dicomObject("1.2", testPatient, 20))
	part := "--BB\r\nContent-Type: application/dicom\r\n\r\n" + obj + "\r\n"
	// A part larger than what the gateway gathers before writing: the
	// answer has started when the PACS dies inside it.
	big := "--BB\r\nContent-Type: application/dicom\r\nContent-Length: 900000\r\n\r\n" +
		string(dicomObject("1.2", testPatient, 900000)[:2*coalesceSize])
	const rendered = "/studies/1.2/series/3.4/instances/5.6/rendered"
	cases := []struct {
		name     string
		path     string
		h        http.HandlerFunc
		complete bool
		started  bool // the break comes after bytes reached the client
	}{
		// Control: a complete multipart body framed by the connection close.
		{"complete multipart, connection close", "/studies/1.2", rawUpstream(mpHead, part+part+"--BB--\r\n"), true, true},
		// The PACS died before the close delimiter: EOF looks normal to
		// HTTP, only the missing delimiter shows the truncation.
		{"multipart without close delimiter", "/studies/1.2", rawUpstream(mpHead, part+part), false, false},
		{"multipart cut inside a part", "/studies/1.2", rawUpstream(mpHead, part+"--BB\r\nContent-Type: application/dicom\r\n\r\n"+obj[:150]), false, false},
		// A body shorter than its Content-Length: the proxy itself aborts.
		{"short Content-Length body", rendered, rawUpstream("HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 1000\r\n", "JFIF-only-some-bytes"), false, false},
		{"truncated JSON without length", "/studies/1.2/metadata", rawUpstream("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: application/dicom+json\r\n", `[{"0020000D":{"vr":"UI","Value":["1.2"]}`), false, false},
		{"cut inside a large part", "/studies/1.2", rawUpstream(mpHead, part+big), false, true},
		{"large image shorter than its Content-Length", rendered, rawUpstream("HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 900000\r\n", strings.Repeat("j", 2*coalesceSize)), false, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, _, _ := retrieveSetup(t, tc.h, nil)
			gw := gateway(t, s)
			resp, err := http.Get(gw.URL + tc.path)
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if !tc.started {
				// Nothing had gone out: a clean error answer.
				if resp.StatusCode != http.StatusBadGateway || err != nil {
					t.Fatalf("status %d, read error %v; want a clean 502 (the answer broke before any byte was sent)", resp.StatusCode, err)
				}
				return
			}
			if resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
			if tc.complete {
				if err != nil || !strings.HasSuffix(string(body), "--BB--\r\n") {
					t.Errorf("complete body: err %v, body %q", err, body)
				}
				return
			}
			if err == nil {
				t.Errorf("the client read a well-formed short body (%d bytes); want a broken transfer", len(body))
			} else if !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Logf("client read error: %v", err)
			}
		})
	}
}

func TestRetrieveHead(t *testing.T) {
	s, up, _ := retrieveSetup(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/dicom+json")
		w.Header().Set("Content-Length", "2")
		w.Write([]byte("[]"))
	}, nil)
	gw := gateway(t, s)
	resp, err := http.Head(gw.URL + "/studies/1.2/metadata")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/dicom+json" {
		t.Errorf("HEAD: %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if m := up.last(t).Method; m != http.MethodGet {
		t.Errorf("upstream method = %s, want GET (Orthanc answers HEAD with 404)", m)
	}
}

func TestRetrieveRefusesCompressedRewrites(t *testing.T) {
	s, _, _ := retrieveSetup(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/dicom+json")
		w.Header().Set("Content-Encoding", "br")
		w.Write([]byte("\x00\x01"))
	}, nil)
	rec := httptest.NewRecorder()
	err := s.Retrieve(rec, httptest.NewRequest(http.MethodGet, "/x", nil),
		imagesource.Retrieval{Path: mustParse(t, "studies/1.2/metadata"), PublicBase: publicBase})
	if e, ok := imagesource.AsError(err); !ok || e.Status != http.StatusBadGateway || rec.Body.Len() != 0 {
		t.Fatalf("err = %v, body %q; want a 502 and nothing written", err, rec.Body.String())
	}
}

func TestRetrieveRefusesBadPublicBase(t *testing.T) {
	s, up, _ := retrieveSetup(t, func(w http.ResponseWriter, r *http.Request) {}, nil)
	for _, pb := range []string{"", "/relative", "https://gw/x\"y", "https://gw/x\r\nSet-Cookie: a"} {
		err := s.Retrieve(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/x", nil),
			imagesource.Retrieval{Path: mustParse(t, "studies/1.2"), PublicBase: pb})
		if _, ok := imagesource.AsError(err); !ok {
			t.Errorf("public base %q: err = %v", pb, err)
		}
	}
	if len(up.reqs) != 0 {
		t.Error("the PACS was called")
	}
}

// A small answer of known length that the PACS cuts short is a clean 502
// however slowly its bytes arrive: the gateway gathers it whole before the
// status line goes out. The PACS here sends part of the body and dies only
// once the client has seen response headers (or after a bound, if it never
// does): a gateway that flushed the start of the answer early would answer
// 200 and break.
func TestRetrieveSlowShortAnswerIsACleanError(t *testing.T) {
	headersSeen := make(chan struct{})
	upstream := func(w http.ResponseWriter, r *http.Request) {
		conn, buf, err := http.NewResponseController(w).Hijack()
		if err != nil {
			panic(err)
		}
		defer conn.Close()
		buf.WriteString("HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 1000\r\n\r\nJFIF-only-some-bytes")
		buf.Flush()
		select {
		case <-headersSeen:
		case <-time.After(200 * time.Millisecond): // far past the 2 ms flush latency
		}
	}
	s, _, _ := retrieveSetup(t, upstream, nil)
	gw := gateway(t, s)
	req, _ := http.NewRequest(http.MethodGet, gw.URL+"/studies/1.2/series/3.4/instances/5.6/rendered", nil)
	req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
		GotFirstResponseByte: func() { close(headersSeen) },
	}))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway || err != nil {
		t.Fatalf("status %d, read error %v; want a clean 502", resp.StatusCode, err)
	}
}

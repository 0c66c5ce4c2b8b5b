// Package badpacs is a deliberately misbehaving PACS for tests: an HTTP
// server in front of a real DICOMweb server (Orthanc, in the project's
// tests) that answers as the real one does until it is told to misbehave
// in one of the ways a misconfigured archive, a bad routing rule or a bug
// would: answer one study's paths with another study's data, append
// another patient's instance to a study, relabel the patient, redirect,
// or write URIs that point at another host.
//
// Only WADO-RS paths (studies/{uid}/…) misbehave; searches are passed on
// unchanged, so a gateway in front can find the studies to ask for.
package badpacs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Fault is a way to misbehave.
type Fault string

// The faults.
const (
	// Honest passes every request on and every answer back unchanged.
	Honest Fault = "honest"
	// SwapStudy answers a request for the victim's study with the
	// corresponding resource of another study: each UID of the path found
	// in Config.Swap is replaced before the request goes upstream.
	SwapStudy Fault = "swap-study"
	// AppendForeign answers with the real answer plus another patient's
	// instance (Config.Foreign): one more multipart part, or one more
	// object in metadata.
	AppendForeign Fault = "append-foreign"
	// RelabelPatient replaces Config.RelabelFrom by Config.RelabelTo (of
	// the same length) everywhere in the answer: the study is right, the
	// PatientID is not.
	RelabelPatient Fault = "relabel-patient"
	// Redirect answers every WADO-RS request with a 302 to ForeignHost.
	Redirect Fault = "redirect"
	// ForeignURIs writes ForeignHost into the answer's URIs: its own
	// DICOMweb root in the body becomes ForeignHost's (BulkDataURI,
	// RetrieveURL), every multipart part gets a Content-Location on
	// ForeignHost, and so does the answer.
	ForeignURIs Fault = "foreign-uris"
)

// ForeignHost is where Redirect and ForeignURIs point: a host that is no
// PACS root of the gateway's.
const ForeignHost = "evil.example:8042"

// Config says how to misbehave.
type Config struct {
	Fault Fault
	// Swap maps the victim's UIDs (study, series, instance) to another
	// study's (SwapStudy).
	Swap map[string]string
	// Foreign is the DICOMweb path of another patient's instance,
	// "studies/{uid}/series/{uid}/instances/{uid}" (AppendForeign).
	Foreign string
	// RelabelFrom and RelabelTo are PatientID values of the same length
	// (RelabelPatient).
	RelabelFrom, RelabelTo string
}

// Server is a running misbehaving PACS. It is safe for concurrent use.
type Server struct {
	upstream    *url.URL // the real DICOMweb root
	user, pass  string
	client      *http.Client
	srv         *http.Server
	ln          net.Listener
	mu          sync.Mutex
	cfg         Config
	misbehaved  atomic.Int64
	dicomwebURL string
}

// Start serves on a free loopback port in front of the DICOMweb root
// upstream (e.g. http://127.0.0.1:8042/dicom-web), which it calls with the
// given basic credentials. It starts Honest.
func Start(upstream, user, password string) (*Server, error) {
	u, err := url.Parse(strings.TrimRight(upstream, "/"))
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("badpacs: upstream %q is not an absolute URL", upstream)
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("badpacs: listen: %w", err)
	}
	s := &Server{upstream: u, user: user, pass: password, ln: ln, cfg: Config{Fault: Honest},
		client: &http.Client{
			Timeout:       30 * time.Second,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
			Transport:     &http.Transport{IdleConnTimeout: 500 * time.Millisecond, DisableCompression: true},
		}}
	s.dicomwebURL = "http://" + ln.Addr().String() + u.Path
	s.srv = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = s.srv.Serve(ln) }()
	return s, nil
}

// DICOMwebURL is the DICOMweb root to configure a gateway with.
func (s *Server) DICOMwebURL() string { return s.dicomwebURL }

// Set changes how the server behaves from the next request on.
func (s *Server) Set(c Config) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cfg = c
}

// Misbehaved counts the answers the server changed (or made up) since it
// started: a test can tell an attack that did not happen from one that
// was stopped.
func (s *Server) Misbehaved() int64 { return s.misbehaved.Load() }

// Close stops the server.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	s.client.CloseIdleConnections()
	return err
}

func (s *Server) config() Config {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cfg
}

// wadoPath matches a WADO-RS path under the DICOMweb root.
var wadoPath = regexp.MustCompile(`/studies/[0-9.]+`)

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rel, ok := strings.CutPrefix(r.URL.Path, s.upstream.Path+"/")
	if !ok {
		http.NotFound(w, r)
		return
	}
	cfg := s.config()
	if !wadoPath.MatchString("/"+rel) || cfg.Fault == "" {
		cfg.Fault = Honest
	}
	if cfg.Fault == Redirect {
		s.misbehaved.Add(1)
		http.Redirect(w, r, "http://"+ForeignHost+r.URL.RequestURI(), http.StatusFound)
		return
	}
	if cfg.Fault == SwapStudy {
		segs := strings.Split(rel, "/")
		for i, seg := range segs {
			if to, ok := cfg.Swap[seg]; ok {
				segs[i] = to
				s.misbehaved.Add(1)
			}
		}
		rel = strings.Join(segs, "/")
	}
	resp, body, err := s.get(r, rel, r.URL.RawQuery)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	if resp.StatusCode == http.StatusOK {
		switch cfg.Fault {
		case AppendForeign:
			body, err = s.appendForeign(r, resp.Header.Get("Content-Type"), body, cfg.Foreign)
		case RelabelPatient:
			if len(cfg.RelabelFrom) != len(cfg.RelabelTo) || cfg.RelabelFrom == "" {
				err = errors.New("badpacs: RelabelFrom and RelabelTo must have the same length")
				break
			}
			if bytes.Contains(body, []byte(cfg.RelabelFrom)) {
				body = bytes.ReplaceAll(body, []byte(cfg.RelabelFrom), []byte(cfg.RelabelTo))
				s.misbehaved.Add(1)
			}
		case ForeignURIs:
			body = s.foreignURIs(resp, body)
			resp.Header.Set("Content-Location", "http://"+ForeignHost+s.upstream.Path+"/"+rel)
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
	}
	for _, h := range []string{"Content-Type", "Content-Location", "Cache-Control", "Retry-After"} {
		if v := resp.Header.Get(h); v != "" {
			w.Header().Set(h, v)
		}
	}
	w.Header().Set("Content-Length", fmt.Sprint(len(body)))
	w.WriteHeader(resp.StatusCode)
	_, _ = w.Write(body)
}

// get asks the real PACS for rel (relative to its DICOMweb root) with the
// client's Accept and Host (Orthanc writes URLs on the Host it is asked
// by) and reads the whole answer.
func (s *Server) get(r *http.Request, rel, rawQuery string) (*http.Response, []byte, error) {
	u := *s.upstream
	u.Path = s.upstream.Path + "/" + rel
	u.RawQuery = rawQuery
	req, err := http.NewRequestWithContext(r.Context(), http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, nil, err
	}
	req.Host = r.Host
	if a := r.Header.Get("Accept"); a != "" {
		req.Header.Set("Accept", a)
	}
	req.SetBasicAuth(s.user, s.pass)
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, nil, fmt.Errorf("badpacs: upstream: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, nil, fmt.Errorf("badpacs: upstream body: %w", err)
	}
	return resp, body, nil
}

// appendForeign adds the foreign instance to a multipart answer (as one
// more part) or to a metadata answer (as one more object).
func (s *Server) appendForeign(r *http.Request, contentType string, body []byte, foreign string) ([]byte, error) {
	if foreign == "" {
		return nil, errors.New("badpacs: AppendForeign needs Config.Foreign")
	}
	mt, params, _ := mime.ParseMediaType(contentType)
	switch {
	case strings.HasPrefix(mt, "multipart/") && params["boundary"] != "":
		resp, fb, err := s.get(r, foreign, "")
		if err != nil || resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("badpacs: foreign instance: HTTP %v, %v", statusOf(resp), err)
		}
		_, fparams, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
		part, err := multipart.NewReader(bytes.NewReader(fb), fparams["boundary"]).NextPart()
		if err != nil {
			return nil, fmt.Errorf("badpacs: foreign instance: %w", err)
		}
		inst, err := io.ReadAll(part)
		if err != nil {
			return nil, fmt.Errorf("badpacs: foreign instance: %w", err)
		}
		closing := []byte("--" + params["boundary"] + "--")
		i := bytes.LastIndex(body, closing)
		if i < 0 {
			return nil, errors.New("badpacs: the answer has no close delimiter")
		}
		var out bytes.Buffer
		out.Write(body[:i])
		fmt.Fprintf(&out, "--%s\r\nContent-Type: application/dicom\r\nContent-Length: %d\r\n\r\n", params["boundary"], len(inst))
		out.Write(inst)
		out.WriteString("\r\n")
		out.Write(body[i:])
		s.misbehaved.Add(1)
		return out.Bytes(), nil
	case strings.HasSuffix(mt, "json"):
		resp, fb, err := s.get(r, foreign+"/metadata", "")
		if err != nil || resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("badpacs: foreign metadata: HTTP %v, %v", statusOf(resp), err)
		}
		a, b := bytes.TrimSpace(body), bytes.TrimSpace(fb)
		if len(a) < 2 || len(b) < 2 || a[len(a)-1] != ']' || b[0] != '[' {
			return nil, errors.New("badpacs: metadata answers are not arrays")
		}
		out := append(append(append([]byte(nil), a[:len(a)-1]...), ','), b[1:]...)
		s.misbehaved.Add(1)
		return out, nil
	}
	return body, nil
}

func statusOf(resp *http.Response) any {
	if resp == nil {
		return "none"
	}
	return resp.StatusCode
}

// ownRoot matches an absolute DICOMweb root URL as Orthanc writes it.
var ownRoot = regexp.MustCompile(`https?:(?:\\?/){2}[A-Za-z0-9.:\[\]-]+((?:\\?/)dicom-web(?:\\?/))`)

// foreignURIs moves the answer's URIs to ForeignHost: in JSON and in
// multipart part headers the DICOMweb root is replaced, and every part
// gets a Content-Location there.
func (s *Server) foreignURIs(resp *http.Response, body []byte) []byte {
	n := 0
	body = ownRoot.ReplaceAllFunc(body, func(m []byte) []byte {
		n++
		slash := "/"
		if bytes.Contains(m, []byte(`\/`)) {
			slash = `\/`
		}
		return []byte("http:" + slash + slash + ForeignHost + slash + "dicom-web" + slash)
	})
	mt, params, _ := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if b := params["boundary"]; strings.HasPrefix(mt, "multipart/") && b != "" {
		delim := []byte("--" + b + "\r\n")
		loc := []byte("--" + b + "\r\nContent-Location: http://" + ForeignHost + "/wado/part\r\n")
		n += bytes.Count(body, delim)
		body = bytes.ReplaceAll(body, delim, loc)
	}
	if n > 0 {
		s.misbehaved.Add(1)
	}
	return body
}

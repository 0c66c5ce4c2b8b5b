package dicomweb

import (
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/smart-imaging/smart_imaging/imagesource"
	"github.com/smart-imaging/smart_imaging/imagesource/wadopath"
	"github.com/smart-imaging/smart_imaging/internal/upstream"
)

// thumbnailViewport is the size a thumbnail is rendered at when the client
// names none.
const thumbnailViewport = "128,128"

// renderedParams are the query parameters DICOMweb defines for rendered
// and thumbnail resources (PS3.18 §8.3.5.1). No other resource gets any
// query parameter: media types travel in the Accept header.
var renderedParams = []string{"quality", "viewport", "window", "iccprofile", "annotation", "charset"}

// passRequestHeaders are the client headers the PACS sees. Everything else
// (Authorization, Cookie, Forwarded, X-Forwarded-*, …) is dropped; the
// configured credentials are added.
var passRequestHeaders = []string{"Accept", "Accept-Charset", "If-None-Match", "If-Modified-Since", "User-Agent"}

// dropResponseHeaders never reach the client: they belong to the PACS
// (its session, its challenge, its CORS policy) or are recomputed.
var dropResponseHeaders = []string{"Set-Cookie", "Set-Cookie2", "Www-Authenticate", "Proxy-Authenticate",
	"Access-Control-Allow-Origin", "Access-Control-Allow-Credentials", "Access-Control-Allow-Headers",
	"Access-Control-Allow-Methods", "Access-Control-Expose-Headers", "Access-Control-Max-Age", "Content-Location",
	"Location", "Link", "Refresh", "Alt-Svc"}

const (
	maxParamLen  = 256
	maxQueryLen  = 2048
	maxAcceptLen = 4096
	maxErrorBody = 8 << 10
)

// Retrieve answers a WADO-RS request through the proxy. The upstream
// request is built fresh on a clone of r: path = the base URL's path + "/"
// + req.Path (the parsed allow-listed path, never the client's raw path);
// query = only the rendered/thumbnail parameters DICOMweb defines; headers
// = Accept (and a few conditional headers) plus the configured
// credentials; Host = the base URL's host. HEAD is sent as GET (Orthanc
// answers HEAD with 404) and the body is discarded.
//
// The answer streams to w, flushed as it arrives. URLs that point at the
// PACS's DICOMweb root (Content-Location, and in application/dicom+json
// bodies RetrieveURL and BulkDataURI; in multipart answers the part
// headers) are rewritten onto req.PublicBase while streaming. Metadata is
// asked for and served as application/dicom+json only.
//
// When the PACS answers with an error status, nothing is written and an
// *imagesource.Error is returned (400, 404 and 406 keep their status; 401
// and 403 become 502 naming the credentials; 503 keeps its Retry-After;
// other failures become 502, timeouts 504). The status line goes out with
// the first body bytes, so an answer that breaks before any of it was
// sent is also a 502. When it breaks later, a plain error is returned (or
// the proxy's http.ErrAbortHandler panic passes through) so the caller
// aborts the connection: the client sees a broken transfer, never a short
// one.
func (s *Source) Retrieve(w http.ResponseWriter, r *http.Request, req imagesource.Retrieval) error {
	publicBase, err := checkPublicBase(req.PublicBase)
	if err != nil {
		return err
	}
	path := req.Path
	clientQuery := r.URL.Query()
	if path.Resource == wadopath.Thumbnail {
		// Thumbnails are asked for as small renderings: PACSes without the
		// thumbnail resource (Orthanc's plugin before 1.19) all have rendered.
		path.Resource = wadopath.Rendered
		if clientQuery.Get("viewport") == "" {
			clientQuery.Set("viewport", thumbnailViewport)
		}
	}
	rel := path.String()
	if _, err := wadopath.Parse(rel); err != nil {
		return &imagesource.Error{Status: http.StatusBadRequest, Code: "invalid", Message: err.Error(), Err: err}
	}
	query, err := upstreamQuery(path, clientQuery)
	if err != nil {
		return err
	}
	accept, err := upstreamAccept(req.Path, r.Header.Values("Accept"))
	if err != nil {
		return err
	}

	r2 := r.Clone(r.Context())
	r2.Method = http.MethodGet
	r2.URL = &url.URL{Path: s.base.Path + "/" + rel, RawQuery: query}
	r2.RequestURI = ""
	r2.Host = s.base.Host
	r2.Header = make(http.Header)
	for _, h := range passRequestHeaders {
		if vs := r.Header.Values(h); len(vs) > 0 {
			r2.Header[h] = append([]string(nil), vs...)
		}
	}
	if accept != "" {
		r2.Header.Set("Accept", accept)
	}
	s.setAuth(r2.Header)
	r2.Body, r2.ContentLength, r2.TransferEncoding, r2.Trailer = http.NoBody, 0, nil, nil
	r2.Close = false

	pw := &proxyWriter{
		w:       w,
		src:     s,
		header:  make(http.Header),
		head:    r.Method == http.MethodHead,
		repl:    publicBase + "/",
		relPath: rel,
	}
	next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error {
		return caddyhttp.Error(http.StatusBadGateway, errors.New("dicomweb: the reverse proxy passed the request on instead of answering it"))
	})
	defer pw.abandon()
	return pw.finish(s.serveProxy(pw, r2, next))
}

// errAbortedBeforeSending stands for the proxy's http.ErrAbortHandler
// panic when nothing had reached the client yet.
var errAbortedBeforeSending = errors.New("the proxy aborted the answer")

// serveProxy runs the reverse proxy. Its abort panic (the answer broke
// while streaming) is turned into an error when no byte had reached the
// client, so finish can still answer with a clean 502; otherwise it
// passes through and the connection is aborted.
func (s *Source) serveProxy(pw *proxyWriter, r *http.Request, next caddyhttp.Handler) (perr error) {
	defer func() {
		if v := recover(); v != nil {
			if v == http.ErrAbortHandler && pw.started && pw.out != nil && !pw.out.headSent() {
				perr = errAbortedBeforeSending
				return
			}
			panic(v)
		}
	}()
	return s.proxy.ServeHTTP(pw, r, next)
}

// checkPublicBase refuses a public base that could break out of a URL in a
// JSON string or a header; it returns it without a trailing slash.
func checkPublicBase(s string) (string, error) {
	s = strings.TrimRight(s, "/")
	u, err := url.Parse(s)
	bad := err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == ""
	for i := 0; i < len(s) && !bad; i++ {
		c := s[i]
		bad = c <= 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>'
	}
	if bad {
		return "", &imagesource.Error{Status: http.StatusInternalServerError, Code: "exception",
			Message: "the gateway's public address for this study is not a plain absolute URL"}
	}
	return s, nil
}

// upstreamQuery keeps only the parameters DICOMweb defines for the
// resource: rendered and thumbnail get quality, viewport, window,
// iccprofile, annotation and charset; everything else gets none.
func upstreamQuery(p wadopath.Path, q url.Values) (string, error) {
	if p.Resource != wadopath.Rendered && p.Resource != wadopath.Thumbnail {
		return "", nil
	}
	out := url.Values{}
	for _, name := range renderedParams {
		for _, v := range q[name] {
			if len(v) > maxParamLen || strings.IndexFunc(v, func(c rune) bool { return c < 0x20 || c == 0x7f }) >= 0 {
				return "", imagesource.Errorf(http.StatusBadRequest, "invalid", "query parameter %s is too long or holds control characters", name)
			}
			out.Add(name, v)
		}
	}
	enc := encodeQuery(out)
	if len(enc) > maxQueryLen {
		return "", imagesource.Errorf(http.StatusBadRequest, "invalid", "the query string is longer than %d bytes", maxQueryLen)
	}
	return enc, nil
}

// upstreamAccept decides the Accept header sent to the PACS. Metadata is
// served as application/dicom+json only (so every URL in it can be
// rewritten): a client that accepts nothing of the sort gets a 406. Other
// resources pass the client's Accept through.
func upstreamAccept(p wadopath.Path, values []string) (string, error) {
	joined := strings.Join(values, ", ")
	if len(joined) > maxAcceptLen {
		return "", imagesource.Errorf(http.StatusBadRequest, "invalid", "the Accept header is longer than %d bytes", maxAcceptLen)
	}
	if p.Resource == wadopath.Objects && !acceptsObjects(joined) {
		return "", imagesource.Errorf(http.StatusNotAcceptable, "not-supported",
			`DICOM objects are served as multipart/related; type="application/dicom" (or application/dicom for one instance)`)
	}
	if p.Resource != wadopath.Metadata {
		return joined, nil
	}
	if strings.TrimSpace(joined) == "" {
		return "application/dicom+json", nil
	}
	for _, part := range strings.Split(joined, ",") {
		mt, params, err := mime.ParseMediaType(strings.TrimSpace(part))
		if err != nil {
			continue
		}
		if q := params["q"]; q == "0" || q == "0.0" || q == "0.00" || q == "0.000" {
			continue
		}
		switch mt {
		case "*/*", "application/*", "application/dicom+json", "application/json":
			return "application/dicom+json", nil
		}
	}
	return "", imagesource.Errorf(http.StatusNotAcceptable, "not-supported",
		"metadata is available as application/dicom+json only")
}

// acceptsObjects reports whether an Accept header leaves room for DICOM
// objects, the only answer a study, series or instance retrieve has:
// multipart/related (whatever its type parameter: the PACS decides),
// application/dicom, or a wildcard. A header that names only other types
// (application/zip, text/html, …) is refused with 406 before the PACS is
// asked, as the folder source does; Orthanc would answer 400. A range that
// does not parse is left for the PACS to judge.
func acceptsObjects(accept string) bool {
	if strings.TrimSpace(accept) == "" {
		return true
	}
	for _, part := range strings.Split(accept, ",") {
		mt, params, err := mime.ParseMediaType(strings.TrimSpace(part))
		if err != nil && !errors.Is(err, mime.ErrInvalidMediaParameter) {
			return true
		}
		if q, err := strconv.ParseFloat(params["q"], 64); err == nil && q == 0 {
			continue // explicitly not acceptable
		}
		switch mt {
		case "*/*", "multipart/*", "multipart/related", "application/*", "application/dicom":
			return true
		}
	}
	return false
}

// proxyWriter sits between the reverse proxy and the client. It holds the
// upstream's headers until the status is known: an error status is kept
// from the client (and turned into an *imagesource.Error by finish); a
// success passes on with the PACS's URLs rewritten, the body streamed
// through a bodyFilter and flushed after every write.
type proxyWriter struct {
	w       http.ResponseWriter
	src     *Source
	header  http.Header // what the proxy sets: the upstream's headers
	head    bool
	repl    string // public base + "/"
	relPath string

	status  int  // upstream status
	failed  bool // upstream status >= 400, or an answer we cannot pass on
	started bool // a success status was accepted (sent to w with the first body bytes)
	early   *imagesource.Error
	errBody []byte
	body    bodyFilter
	// out gathers what goes to the client into large writes (nil until
	// the status is known, and for HEAD).
	out *coalescer
}

func (pw *proxyWriter) Header() http.Header { return pw.header }

func (pw *proxyWriter) WriteHeader(code int) {
	if pw.started || pw.failed {
		return
	}
	if code < 200 {
		return // informational (100, 103): not passed on
	}
	pw.status = code
	if code >= 400 {
		pw.failed = true
		return
	}
	out := make(http.Header, len(pw.header)+1)
	for k, vs := range pw.header {
		out[k] = vs
	}
	for _, h := range dropResponseHeaders {
		out.Del(h)
	}
	// Patient images are for this caller only, whatever the PACS says
	// about caching: no shared cache may keep them (as the folder source).
	if cc := strings.ToLower(out.Get("Cache-Control")); !strings.Contains(cc, "private") && !strings.Contains(cc, "no-store") {
		out.Set("Cache-Control", "private")
	}
	for _, h := range []string{"Content-Location", "Location"} {
		if v := pw.header.Get(h); v != "" {
			if nv, ok := pw.rewriteURL(v); ok {
				out.Set(h, nv)
			}
		}
	}

	var needJSON, needMultipart bool
	var boundary string
	if code != http.StatusNoContent && code != http.StatusNotModified {
		ct := pw.header.Get("Content-Type")
		mt, params, _ := mime.ParseMediaType(ct)
		boundary = params["boundary"]
		needJSON = mt == "application/dicom+json" || mt == "application/json" || strings.HasSuffix(mt, "+json")
		needMultipart = strings.HasPrefix(mt, "multipart/") && boundary != ""
		if needJSON || needMultipart {
			if enc := strings.ToLower(strings.TrimSpace(pw.header.Get("Content-Encoding"))); enc != "" && enc != "identity" {
				pw.failed = true
				pw.early = imagesource.Errorf(http.StatusBadGateway, "exception",
					"the PACS answered with Content-Encoding %q, which the gateway cannot rewrite; disable compression on the PACS or the transport", enc)
				return
			}
			// The length changes when URLs are rewritten.
			out.Del("Content-Length")
		}
	}
	pw.started = true
	// The status and headers reach the client with the first bytes of the
	// body: an answer that breaks before any byte went out still becomes
	// a clean 502 (see finish).
	sendHead := func(length int64) {
		dst := pw.w.Header()
		for k, vs := range out {
			dst[k] = vs
		}
		if length >= 0 && code != http.StatusNoContent && code != http.StatusNotModified {
			dst.Set("Content-Length", strconv.FormatInt(length, 10))
		}
		pw.w.WriteHeader(code)
	}
	if pw.head {
		sendHead(-1)
		return
	}
	pw.out = newCoalescer(pw.w, sendHead)
	switch {
	case needJSON:
		pw.body = newJSONFilter(pw.out, pw.src.jsonNeedles(), jsonString(pw.repl))
	case needMultipart:
		pw.body = newMultipartFilter(pw.out, boundary, pw.src.needles, pw.repl)
	}
}

func (pw *proxyWriter) Write(p []byte) (int, error) {
	if !pw.started && !pw.failed {
		pw.WriteHeader(http.StatusOK)
	}
	if pw.failed {
		if room := maxErrorBody - len(pw.errBody); room > 0 {
			if len(p) < room {
				room = len(p)
			}
			pw.errBody = append(pw.errBody, p[:room]...)
		}
		return len(p), nil
	}
	if pw.head || pw.out == nil {
		return len(p), nil
	}
	var err error
	if pw.body != nil {
		_, err = pw.body.Write(p)
	} else {
		_, err = pw.out.Write(p)
	}
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

// FlushError flushes what was passed on to the client, within
// coalesceLatency. Held-back bytes (a possible start of a URL to rewrite)
// stay held back.
func (pw *proxyWriter) FlushError() error {
	if !pw.started {
		return nil
	}
	if pw.out != nil {
		return pw.out.FlushError()
	}
	err := http.NewResponseController(pw.w).Flush()
	if errors.Is(err, http.ErrNotSupported) {
		return nil
	}
	return err
}

// Flush is FlushError for callers that use http.Flusher.
func (pw *proxyWriter) Flush() { _ = pw.FlushError() }

// abandon releases the coalescer if finish did not close it (an error, or
// the proxy's abort panic): what it gathered is dropped, since the caller
// aborts the connection.
func (pw *proxyWriter) abandon() {
	if pw.out != nil {
		pw.out.discard()
	}
}

// finish turns the proxy's outcome into Retrieve's result.
func (pw *proxyWriter) finish(perr error) error {
	if pw.started {
		err := perr
		if err != nil {
			err = fmt.Errorf("dicomweb: the PACS's answer broke off: %w", perr)
		} else if pw.body != nil {
			if cerr := pw.body.Close(); cerr != nil {
				if errors.Is(cerr, errTruncated) {
					pw.src.logger.Warn("upstream answer ended early", zap.String("path", pw.relPath), zap.Int("status", pw.status))
				}
				err = fmt.Errorf("dicomweb: %w", cerr)
			}
		}
		if err == nil {
			if pw.out != nil {
				return pw.out.close()
			}
			return pw.FlushError()
		}
		if pw.out != nil && !pw.out.headSent() {
			// Nothing reached the client yet: it gets a clean error
			// instead of a broken transfer.
			pw.out.discard()
			if he, ok := errors.AsType[caddyhttp.HandlerError](perr); ok && he.StatusCode == 499 {
				return err // the client went away
			}
			return &imagesource.Error{Status: http.StatusBadGateway, Code: "exception",
				Message: "the PACS's answer broke off before any of it was sent", Err: err}
		}
		return err
	}
	if pw.early != nil {
		return pw.early
	}
	if pw.failed {
		e := retrieveStatusError(pw.status, pw.header.Get("Retry-After"), errorDetail(pw.errBody))
		e.Err = fmt.Errorf("WADO-RS %s: HTTP %d", pw.relPath, pw.status)
		if pw.status == http.StatusUnauthorized || pw.status == http.StatusForbidden || pw.status >= 500 {
			pw.src.logger.Warn("PACS refused a retrieve", zap.String("path", pw.relPath), zap.Int("status", pw.status))
		}
		return e
	}
	if perr == nil {
		return imagesource.Errorf(http.StatusBadGateway, "exception", "the PACS sent no answer")
	}
	var he caddyhttp.HandlerError
	if errors.As(perr, &he) {
		switch {
		case he.StatusCode == http.StatusGatewayTimeout:
			return upstream.TimedOut("the PACS did not answer in time", perr)
		case he.StatusCode == 499:
			return fmt.Errorf("dicomweb: the client went away: %w", perr)
		}
	}
	return upstream.Failed(perr, "the PACS did not answer in time",
		"the PACS could not be reached ("+describeNetError(perr)+")")
}

// rewriteURL maps an absolute URL under the PACS's DICOMweb root onto the
// public base; any other value is dropped (ok false).
func (pw *proxyWriter) rewriteURL(v string) (string, bool) {
	for _, n := range pw.src.needles {
		if strings.HasPrefix(v, n) {
			return pw.repl + v[len(n):], true
		}
	}
	return "", false
}

// jsonNeedles are the PACS URL prefixes as they may appear inside JSON
// strings: plain, and with escaped slashes.
func (s *Source) jsonNeedles() []string {
	out := append([]string(nil), s.needles...)
	for _, n := range s.needles {
		out = append(out, strings.ReplaceAll(n, "/", `\/`))
	}
	return out
}

// jsonString escapes s for use inside a JSON string.
func jsonString(s string) string {
	var b strings.Builder
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s)
	out := strings.TrimSpace(b.String())
	return out[1 : len(out)-1]
}

// Interface guards
var (
	_ http.ResponseWriter = (*proxyWriter)(nil)
	_ http.Flusher        = (*proxyWriter)(nil)
)

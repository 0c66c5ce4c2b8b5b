package dicomweb

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/smart-imaging/smart_imaging/imagesource"
	"github.com/smart-imaging/smart_imaging/imagesource/dicomhead"
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
// answers HEAD with 404); the body is checked as for a GET, then dropped.
//
// What the PACS sends is checked against req, not only asked for by path:
//   - metadata (asked for and served as application/dicom+json only) is
//     read whole (at most MaxMetadataBody) and sent only when every object
//     in it passes req.CheckObject (its StudyInstanceUID and PatientID);
//   - DICOM objects, alone (application/dicom) or as multipart parts, are
//     held back until their header passes req.CheckObject (read by
//     dicomhead); an object of another study or patient, or one that
//     cannot be read (not Part 10, deflated, big endian), stops the answer;
//   - frames, bulk data and rendered images carry no identifiers and are
//     streamed as they come; a JSON answer to them is refused.
//
// URIs the PACS writes (Content-Location and Location, in metadata every
// BulkDataURI and UR value such as RetrieveURL, in multipart answers the
// part headers) are mapped onto req.PublicBase when they lie under one of
// the PACS's DICOMweb roots, and dropped otherwise. A redirect from the
// PACS is refused (502), never followed or passed on.
//
// A refusal before any byte went out is an *imagesource.Error 502; after,
// the connection is aborted. Either way it is logged as a PACS fault
// (study UID and path, never the other object's identifiers).
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
	accept, unwrap := multipartAccept(req.Path, accept)

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
		req:     &req,
		header:  make(http.Header),
		head:    r.Method == http.MethodHead,
		repl:    publicBase + "/",
		reqURL:  s.base.ResolveReference(&url.URL{Path: s.base.Path + "/" + rel}),
		relPath: rel,
		unwrap:  unwrap,
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
			if v == http.ErrAbortHandler && !pw.headSent() {
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

// multipartAccept turns a request for one single-part answer into a
// request for the same answer as multipart: an instance asked for as
// application/dicom only, or bulk data asked for as single-part types
// only (application/octet-stream, …). Each media range becomes
// multipart/related with the range as its type and its parameters
// (transfer-syntax, q) kept; unwrap is true and the answer's one part is
// sent single-part (see proxyWriter.unwrap).
//
// Multipart is always asked for, never single-part first: PS3.18 makes
// every origin server answer these resources as multipart, while
// single-part answers are optional and Orthanc (1.10's plugin) refuses
// them with 400. One rule, one PACS round trip per request, on every PACS;
// the part's own header gives the Content-Type and Content-Length that a
// single-part answer (and a Range on it) needs.
//
// An Accept with a multipart range, a wildcard, a range that does not
// parse, or none passes through unchanged: the client takes what the PACS
// sends.
func multipartAccept(p wadopath.Path, accept string) (string, bool) {
	instance := p.Resource == wadopath.Objects && p.InstanceUID != "" && len(p.Frames) == 0
	if (!instance && p.Resource != wadopath.Bulkdata) || strings.TrimSpace(accept) == "" {
		return accept, false
	}
	var out []string
	for _, part := range strings.Split(accept, ",") {
		mt, params, err := mime.ParseMediaType(strings.TrimSpace(part))
		if err != nil || strings.Contains(mt, "*") || strings.HasPrefix(mt, "multipart/") ||
			(instance && mt != "application/dicom") {
			return accept, false
		}
		if q, err := strconv.ParseFloat(params["q"], 64); err == nil && q == 0 {
			continue // not acceptable: not asked for
		}
		if _, ok := params["type"]; ok {
			return accept, false
		}
		params["type"] = mt
		out = append(out, mime.FormatMediaType("multipart/related", params))
	}
	if len(out) == 0 || slices.Contains(out, "") {
		return accept, false
	}
	return strings.Join(out, ", "), true
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
// upstream's headers until the status is known: an error status, a
// redirect or an answer the gateway cannot check is kept from the client
// (and turned into an *imagesource.Error by finish); a success passes on
// with the PACS's URLs mapped onto the gateway (or dropped), the body
// checked and streamed through a bodyFilter, or, for metadata, read whole,
// checked, then sent.
type proxyWriter struct {
	w       http.ResponseWriter
	src     *Source
	req     *imagesource.Retrieval
	header  http.Header // what the proxy sets: the upstream's headers
	head    bool
	repl    string   // public base + "/"
	reqURL  *url.URL // the upstream request's absolute URL
	relPath string

	status  int  // upstream status
	failed  bool // upstream status >= 300, or an answer we cannot pass on
	started bool // a success status was accepted (sent to w with the first body bytes)
	early   *imagesource.Error
	errBody []byte
	body    bodyFilter
	// out gathers what goes to the client into large writes (nil until
	// the status is known, and for metadata).
	out *coalescer
	// buffering: the answer is metadata, gathered in meta and sent by
	// finish once checked.
	buffering bool
	meta      []byte
	sendHead  func(length int64)
	headDone  bool
	// fault is the PACS fault that stopped the answer (an object of
	// another study or patient, or one that cannot be checked).
	fault error
	// unwrap: the client asked for a single-part answer and the PACS was
	// asked for multipart (multipartAccept). A multipart answer is sent
	// as its one part's content, with that part's Content-Type and
	// Content-Length, an object only once checked (modeUnwrap).
	unwrap bool
}

// errUncheckable is wrapped when the PACS sends an object the gateway
// cannot check (not Part 10, a transfer syntax it cannot read, no study
// UID in its first maxObjectHeader bytes): it is not passed on.
var errUncheckable = errors.New("an object the gateway cannot check")

// errMetadataTooLarge is the fault of a metadata answer larger than
// maxMetadataBody.
var errMetadataTooLarge = errors.New("the metadata answer is larger than the gateway checks")

// maxObjectHeader bounds how much of an object is held back to find its
// StudyInstanceUID (real headers need a few KiB).
const maxObjectHeader = 1 << 20

func (pw *proxyWriter) Header() http.Header { return pw.header }

// bodyMode is how a success answer's body is handled.
type bodyMode int

const (
	modePass             bodyMode = iota // streamed as is
	modeMultipart                        // part header URLs mapped, contents streamed
	modeMultipartObjects                 // as modeMultipart, every part checked as a DICOM object
	modeObject                           // one DICOM object, checked
	modeMetadata                         // DICOM JSON, read whole and checked
	modeUnwrap                           // one multipart part sent single-part (objects checked)
)

// bodyMode decides how the answer to the request's resource is handled,
// from its Content-Type: objects must come as application/dicom (alone or
// in multipart parts) and metadata as JSON, so that they can be checked;
// other resources may not be JSON (its URIs would go unchecked).
func (pw *proxyWriter) bodyMode(code int) (bodyMode, string, *imagesource.Error) {
	if code == http.StatusNoContent || code == http.StatusNotModified {
		return modePass, "", nil
	}
	ct := pw.header.Get("Content-Type")
	mt, params, _ := mime.ParseMediaType(ct)
	boundary := params["boundary"]
	isJSON := mt == "application/dicom+json" || mt == "application/json" || strings.HasSuffix(mt, "+json")
	isMultipart := strings.HasPrefix(mt, "multipart/")
	if isMultipart && boundary == "" {
		return 0, "", imagesource.Errorf(http.StatusBadGateway, "exception", "the PACS answered with a multipart body without a boundary")
	}
	var mode bodyMode
	switch pw.req.Path.Resource {
	case wadopath.Metadata:
		if !isJSON {
			return 0, "", imagesource.Errorf(http.StatusBadGateway, "exception",
				"the PACS answered a metadata request with %q, not application/dicom+json", truncateText(ct, 80))
		}
		mode = modeMetadata
	case wadopath.Objects:
		switch {
		case isMultipart:
			mode = modeMultipartObjects
		case mt == "application/dicom":
			mode = modeObject
		default:
			return 0, "", imagesource.Errorf(http.StatusBadGateway, "exception",
				"the PACS answered a DICOM retrieve with %q, which the gateway cannot check; it passes application/dicom only", truncateText(ct, 80))
		}
	default:
		switch {
		case isJSON:
			return 0, "", imagesource.Errorf(http.StatusBadGateway, "exception",
				"the PACS answered a %s request with JSON, which the gateway does not pass on", pw.req.Path.Resource)
		case isMultipart:
			mode = modeMultipart
		default:
			return modePass, "", nil
		}
	}
	if pw.unwrap && isMultipart {
		mode = modeUnwrap
	}
	if enc := strings.ToLower(strings.TrimSpace(pw.header.Get("Content-Encoding"))); enc != "" && enc != "identity" {
		return 0, "", imagesource.Errorf(http.StatusBadGateway, "exception",
			"the PACS answered with Content-Encoding %q, which the gateway cannot check; disable compression on the PACS or the transport", enc)
	}
	return mode, boundary, nil
}

func truncateText(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

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
	if code >= 300 && code != http.StatusNotModified {
		pw.refuse(imagesource.Errorf(http.StatusBadGateway, "exception",
			"the PACS answered with a redirect (HTTP %d), which the gateway does not follow", code))
		return
	}
	mode, boundary, bad := pw.bodyMode(code)
	if bad != nil {
		pw.refuse(bad)
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
			if nv, ok := pw.publicURL(v); ok {
				out.Set(h, nv)
			}
		}
	}
	if mode != modePass {
		// The length changes when URLs are rewritten.
		out.Del("Content-Length")
	}
	pw.started = true
	// The status and headers reach the client with the first bytes of the
	// body: an answer that breaks before any byte went out still becomes
	// a clean 502 (see finish).
	var dst http.ResponseWriter = pw.w
	if pw.head {
		// HEAD was sent upstream as GET: the body is checked as for a
		// GET, then dropped.
		dst = headOnlyWriter{pw.w}
	}
	pw.sendHead = func(length int64) {
		pw.headDone = true
		h := pw.w.Header()
		for k, vs := range out {
			h[k] = vs
		}
		if length >= 0 && code != http.StatusNoContent && code != http.StatusNotModified {
			h.Set("Content-Length", strconv.FormatInt(length, 10))
		}
		pw.w.WriteHeader(code)
	}
	if mode == modeMetadata {
		pw.buffering = true
		if n, err := strconv.Atoi(pw.header.Get("Content-Length")); err == nil && n > 0 && n <= maxMetadataBody {
			pw.meta = make([]byte, 0, n)
		}
		return
	}
	pw.out = newCoalescer(dst, pw.sendHead)
	if n, err := strconv.ParseInt(pw.header.Get("Content-Length"), 10, 64); err == nil && n >= 0 && n <= coalesceSize {
		// A small answer of known length is sent whole or not at all.
		pw.out.whole = true
	}
	switch mode {
	case modeMultipart:
		pw.body = newMultipartFilter(pw.out, boundary, pw.publicURL, nil)
	case modeMultipartObjects:
		pw.body = newMultipartFilter(pw.out, boundary, pw.publicURL, pw.checkObject)
	case modeObject:
		pw.body = &objectFilter{dst: pw.out, check: pw.checkObject}
	case modeUnwrap:
		var check objectCheck
		if pw.req.Path.Resource == wadopath.Objects {
			check = pw.checkObject
		}
		pw.body = newUnwrapFilter(pw.out, boundary, check, func(hdr []byte) { singlePartHeader(out, hdr, pw.req.Path.Resource) })
	}
}

// singlePartHeader sets the answer's Content-Type and Content-Length from
// the header block of the one multipart part that is sent single-part. A
// part without a Content-Type is application/dicom (an object) or
// application/octet-stream (bulk data); one without a valid Content-Length
// goes out without one (then no Range can be served on it).
func singlePartHeader(out http.Header, hdr []byte, res wadopath.Resource) {
	ct := "application/octet-stream"
	if res == wadopath.Objects {
		ct = "application/dicom"
	}
	out.Del("Content-Length")
	for _, line := range bytes.Split(hdr, []byte("\r\n")) {
		name, val, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		v := strings.TrimSpace(string(val))
		switch n := strings.TrimSpace(string(name)); {
		case strings.EqualFold(n, "Content-Type"):
			if mt, _, err := mime.ParseMediaType(v); err == nil && !strings.HasPrefix(mt, "multipart/") &&
				strings.IndexFunc(v, func(c rune) bool { return c < 0x20 || c == 0x7f }) < 0 {
				ct = v
			}
		case strings.EqualFold(n, "Content-Length"):
			if l, err := strconv.ParseInt(v, 10, 64); err == nil && l >= 0 {
				out.Set("Content-Length", strconv.FormatInt(l, 10))
			}
		}
	}
	out.Set("Content-Type", ct)
}

// refuse keeps a success answer from the client: a PACS fault, logged.
func (pw *proxyWriter) refuse(e *imagesource.Error) {
	pw.failed = true
	pw.early = e
	pw.src.logger.Warn("PACS fault: answer refused", zap.String("study", pw.req.StudyUID),
		zap.String("path", pw.relPath), zap.Int("status", pw.status), zap.String("reason", e.Message))
}

// noteFault records and logs the PACS fault that stops the answer: an
// object of another study or patient, or one that cannot be checked.
func (pw *proxyWriter) noteFault(err error) {
	if pw.fault != nil {
		return
	}
	pw.fault = err
	pw.src.logger.Warn("PACS fault: its answer holds an object the request may not see; stopped",
		zap.String("study", pw.req.StudyUID), zap.String("path", pw.relPath),
		zap.String("reason", err.Error()), zap.Bool("after_first_byte", pw.headSent()))
}

// checkObject is the objectCheck of DICOM objects in this answer.
func (pw *proxyWriter) checkObject(prefix []byte, complete bool) (bool, error) {
	id, err := dicomhead.Parse(prefix)
	switch {
	case errors.Is(err, dicomhead.ErrShort):
		if complete {
			return false, fmt.Errorf("%w: an object ends before its StudyInstanceUID", errUncheckable)
		}
		if len(prefix) >= maxObjectHeader {
			return false, fmt.Errorf("%w: no StudyInstanceUID in the first %d bytes of an object", errUncheckable, maxObjectHeader)
		}
		return false, nil
	case err != nil:
		return false, fmt.Errorf("%w: %w", errUncheckable, err)
	}
	if err := pw.req.CheckObject(id.StudyUIDs, id.PatientIDs); err != nil {
		return false, err
	}
	return true, nil
}

// headSent reports whether the status line went to the client.
func (pw *proxyWriter) headSent() bool {
	if pw.out != nil {
		return pw.out.headSent()
	}
	return pw.headDone
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
	if pw.buffering {
		if len(pw.meta)+len(p) > maxMetadataBody {
			pw.noteFault(fmt.Errorf("%w (%d bytes)", errMetadataTooLarge, maxMetadataBody))
			return 0, pw.fault
		}
		pw.meta = append(pw.meta, p...)
		return len(p), nil
	}
	if pw.out == nil {
		return len(p), nil
	}
	var err error
	if pw.body != nil {
		_, err = pw.body.Write(p)
	} else {
		_, err = pw.out.Write(p)
	}
	if err != nil {
		if isFault(err) {
			pw.noteFault(err)
		}
		return 0, err
	}
	return len(p), nil
}

// FlushError flushes what was passed on to the client, within
// coalesceLatency. Held-back bytes (a part not yet checked, metadata)
// stay held back.
func (pw *proxyWriter) FlushError() error {
	if !pw.started || pw.out == nil {
		return nil
	}
	return pw.out.FlushError()
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
	pw.meta = nil
}

// isFault reports whether err stops an answer as a PACS fault: an object
// of another study or patient, one that cannot be checked, or a
// multipart answer to a single-part request that is not one part.
func isFault(err error) bool {
	return errors.Is(err, imagesource.ErrForeignObject) || errors.Is(err, errUncheckable) || errors.Is(err, errNotOnePart)
}

// faultError is what the client gets for a PACS fault found before any
// byte went out.
func faultError(err error) *imagesource.Error {
	msg := "the PACS sent an object the gateway cannot check; nothing was passed on"
	if errors.Is(err, imagesource.ErrForeignObject) {
		msg = "the PACS answered with data of another study or patient; nothing was passed on"
	}
	if errors.Is(err, errNotOnePart) {
		msg = "the PACS answered a request for one object or value with several parts or none; nothing was passed on"
	}
	if errors.Is(err, errMetadataSyntax) {
		msg = "the PACS's metadata is not valid DICOM JSON"
	}
	if errors.Is(err, errMetadataTooLarge) {
		msg = fmt.Sprintf("the PACS's metadata answer is larger than the gateway checks (%d MiB)", maxMetadataBody>>20)
	}
	return &imagesource.Error{Status: http.StatusBadGateway, Code: "exception", Message: msg, Err: err}
}

// finish turns the proxy's outcome into Retrieve's result.
func (pw *proxyWriter) finish(perr error) error {
	if pw.started && pw.buffering {
		return pw.finishMetadata(perr)
	}
	if pw.started {
		if pw.fault != nil {
			if !pw.headSent() {
				pw.out.discard()
				return faultError(pw.fault)
			}
			return fmt.Errorf("dicomweb: the answer was stopped: %w", pw.fault)
		}
		err := perr
		if err != nil {
			err = fmt.Errorf("dicomweb: the PACS's answer broke off: %w", perr)
		} else if pw.body != nil {
			if cerr := pw.body.Close(); cerr != nil {
				if isFault(cerr) {
					pw.noteFault(cerr)
					if !pw.headSent() {
						pw.out.discard()
						return faultError(cerr)
					}
				}
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
			return nil
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

// finishMetadata checks the gathered metadata and sends it, or refuses it
// before any byte went out.
func (pw *proxyWriter) finishMetadata(perr error) error {
	body := pw.meta
	pw.meta = nil
	if pw.fault != nil {
		return faultError(pw.fault)
	}
	if perr != nil {
		if he, ok := errors.AsType[caddyhttp.HandlerError](perr); ok && he.StatusCode == 499 {
			return fmt.Errorf("dicomweb: the client went away: %w", perr)
		}
		return &imagesource.Error{Status: http.StatusBadGateway, Code: "exception",
			Message: "the PACS's answer broke off before any of it was sent", Err: perr}
	}
	out, err := checkMetadata(body, pw.req, pw.publicURL)
	if err != nil {
		pw.noteFault(err)
		return faultError(err)
	}
	pw.sendHead(int64(len(out)))
	if pw.head || len(out) == 0 {
		return nil
	}
	if _, err := pw.w.Write(out); err != nil {
		return fmt.Errorf("dicomweb: sending metadata: %w", err)
	}
	return nil
}

// headOnlyWriter answers a HEAD request: headers and flushes pass, body
// bytes are dropped.
type headOnlyWriter struct{ http.ResponseWriter }

func (h headOnlyWriter) Write(p []byte) (int, error) { return len(p), nil }

// Unwrap lets http.ResponseController reach the client's writer.
func (h headOnlyWriter) Unwrap() http.ResponseWriter { return h.ResponseWriter }

// publicURL maps a URI the PACS wrote into its answer onto the gateway: a
// URI under one of the PACS's DICOMweb roots (absolute, or relative to the
// request) becomes the same path under the study's public base. Any other
// URI is dropped (ok false): a client would follow it with its bearer
// token, which the IG allows to go to the designated endpoints only.
func (pw *proxyWriter) publicURL(v string) (string, bool) {
	v = strings.TrimSpace(v)
	for _, n := range pw.src.needles {
		if strings.HasPrefix(v, n) {
			return pw.publicRest(v[len(n):])
		}
	}
	if v == "" || pw.reqURL == nil {
		return "", false
	}
	u, err := url.Parse(v)
	if err != nil || u.Scheme != "" || u.Host != "" || u.User != nil {
		return "", false // absolute (or scheme-relative) and not under a PACS root
	}
	abs := pw.reqURL.ResolveReference(u).String()
	for _, n := range pw.src.needles {
		if strings.HasPrefix(abs, n) {
			return pw.publicRest(abs[len(n):])
		}
	}
	return "", false
}

// publicRest puts a path relative to a PACS root under the public base.
// A rest that could climb out of it (dot segments, also encoded; a
// backslash) or carries a fragment, spaces or control characters is
// dropped.
func (pw *proxyWriter) publicRest(rest string) (string, bool) {
	for i := 0; i < len(rest); i++ {
		if c := rest[i]; c <= 0x20 || c >= 0x7f || c == '\\' || c == '#' || c == '"' || c == '<' || c == '>' {
			return "", false
		}
	}
	path, _, _ := strings.Cut(rest, "?")
	for _, seg := range strings.Split(path, "/") {
		if seg == "." || seg == ".." || strings.Contains(strings.ToLower(seg), "%2e") || strings.Contains(strings.ToLower(seg), "%2f") {
			return "", false
		}
	}
	return pw.repl + rest, true
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

package folder

import (
	"bufio"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"os"
	"strconv"
	"strings"

	"github.com/suyashkumar/dicom"
	"github.com/suyashkumar/dicom/pkg/tag"

	"github.com/smart-imaging/smart_imaging/imagesource"
	"github.com/smart-imaging/smart_imaging/imagesource/dicomjson"
	"github.com/smart-imaging/smart_imaging/imagesource/wadopath"
)

// Retrieve answers a WADO-RS request (PS3.18 §10.4) for a study the caller
// may see. The series and instance of the path must belong to its study (or
// the answer is 404). Client errors (404 unknown UIDs or frames, 406
// unsupported Accept, 400 bad query parameters) are returned as
// *imagesource.Error before anything is written. Once the answer has begun,
// a failure (a client gone, a file changed on disk) is returned as a plain
// error for the log and the multipart body is left unterminated, so the
// client sees a truncated answer rather than a complete-looking one.
//
// Behaviour worth knowing:
//   - objects are streamed file by file as stored (no transcoding);
//   - frames and pixel bulk data are native little-endian bytes only;
//   - a frame number beyond NumberOfFrames is 404 not-found;
//   - rendered and thumbnail at study or series level render the first
//     instance (in the source's order) and, for a multi-frame instance,
//     its first frame; a frame-level request renders one frame; sizes
//     are bounded by req.MaxRenderSize (imagesource.CheckRender): a larger
//     viewport is 400, an image shown at its own size is fitted into it;
//   - metadata lists the elements before Pixel Data (elements stored after
//     it, such as trailing padding, are not read).
func (s *Source) Retrieve(w http.ResponseWriter, r *http.Request, req imagesource.Retrieval) error {
	p := req.Path
	insts, err := s.selection(p)
	if err != nil {
		return err
	}
	if err := checkSelection(req, insts); err != nil {
		return err
	}
	base := strings.TrimRight(req.PublicBase, "/")
	switch p.Resource {
	case wadopath.Objects:
		return s.serveObjects(w, r, p, insts)
	case wadopath.Metadata:
		return s.serveMetadata(w, r, base, insts)
	case wadopath.Frames:
		return s.serveFrames(w, r, p, insts[0])
	case wadopath.Rendered, wadopath.Thumbnail:
		return s.serveRendered(w, r, p, insts[0], req.MaxRenderSize)
	case wadopath.Bulkdata:
		return s.serveBulk(w, r, p, insts[0])
	}
	return imagesource.Errorf(http.StatusNotFound, "not-found", "resource %q is not served", p.Resource)
}

// checkSelection holds the files about to be served to the Retrieval's
// contract, as the dicomweb source holds a PACS's answers: each file's
// header (as indexed) must name the request's study and one of the
// patient's PatientIDs. A file that does not is not the caller's: 403,
// before anything is written.
func checkSelection(req imagesource.Retrieval, insts []*instance) error {
	for _, inst := range insts {
		err := req.CheckObject(inst.attrs.Strings(dicomjson.TagStudyInstanceUID), inst.attrs.Strings(dicomjson.TagPatientID))
		if err != nil {
			return &imagesource.Error{Status: http.StatusForbidden, Code: "forbidden",
				Message: "the study's files do not belong to the patient this access token is bound to", Err: err}
		}
	}
	return nil
}

func isHead(r *http.Request) bool { return r.Method == http.MethodHead }

func flush(w http.ResponseWriter) {
	_ = http.NewResponseController(w).Flush()
}

func (s *Source) serveObjects(w http.ResponseWriter, r *http.Request, p wadopath.Path, insts []*instance) error {
	tss := make([]string, len(insts))
	for i, inst := range insts {
		tss[i] = inst.ts
	}
	choice, err := negotiateObjects(parseAccept(r), p.Level(), tss)
	if err != nil {
		return err
	}
	// Open the first file before answering, so that a missing file is
	// reported as an error rather than as an empty 200.
	f, size, err := insts[0].open()
	if err != nil {
		return err
	}
	h := w.Header()
	h.Set("Cache-Control", "private")
	if choice.single {
		defer f.Close()
		h.Set("Content-Type", "application/dicom")
		h.Set("Content-Length", strconv.FormatInt(size, 10))
		w.WriteHeader(http.StatusOK)
		if isHead(r) {
			return nil
		}
		if _, err := io.CopyN(w, f, size); err != nil {
			return fmt.Errorf("folder image source: send %s: %w", insts[0].rel, err)
		}
		return nil
	}
	mw := multipart.NewWriter(w)
	h.Set("Content-Type", `multipart/related; type="application/dicom"; boundary=`+mw.Boundary())
	w.WriteHeader(http.StatusOK)
	if isHead(r) {
		f.Close()
		return nil
	}
	for i, inst := range insts {
		if i > 0 {
			if err := r.Context().Err(); err != nil {
				return fmt.Errorf("folder image source: retrieve interrupted: %w", err)
			}
			if f, size, err = inst.open(); err != nil {
				return err
			}
		}
		err := copyPart(mw, f, size)
		f.Close()
		if err != nil {
			return fmt.Errorf("folder image source: send %s: %w", inst.rel, err)
		}
		flush(w)
	}
	if err := mw.Close(); err != nil {
		return fmt.Errorf("folder image source: finish multipart: %w", err)
	}
	return nil
}

// open opens the instance's file and checks that it is still the file that
// was indexed (same size and modification time): a file replaced since
// could hold another study, so it is not served.
func (inst *instance) open() (*os.File, int64, error) {
	f, err := os.Open(inst.path)
	if err != nil {
		return nil, 0, fmt.Errorf("folder image source: open: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("folder image source: stat: %w", err)
	}
	if fi.Size() != inst.size || !fi.ModTime().Equal(inst.modTime) {
		f.Close()
		return nil, 0, fmt.Errorf("folder image source: %s changed since it was indexed; reopen the source", inst.rel)
	}
	return f, fi.Size(), nil
}

func copyPart(mw *multipart.Writer, f *os.File, size int64) error {
	part, err := mw.CreatePart(textproto.MIMEHeader{
		"Content-Type":   {"application/dicom"},
		"Content-Length": {strconv.FormatInt(size, 10)},
	})
	if err != nil {
		return err
	}
	_, err = io.CopyN(part, f, size)
	return err
}

// readInstanceHeader reads the header of an indexed file up to Pixel Data.
func readInstanceHeader(inst *instance) (*header, *os.File, error) {
	f, _, err := inst.open()
	if err != nil {
		return nil, nil, err
	}
	h, err := readHeader(f, 0xFFFF)
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("folder image source: read %s: %w", inst.rel, err)
	}
	return h, f, nil
}

func (s *Source) instanceURL(base string, inst *instance) string {
	return base + "/studies/" + inst.studyUID + "/series/" + inst.seriesUID + "/instances/" + inst.sopUID
}

// metadata converts one instance's header to DICOM JSON.
func (s *Source) metadata(base string, inst *instance) ([]byte, error) {
	h, f, err := readInstanceHeader(inst)
	if err != nil {
		return nil, err
	}
	f.Close()
	url := s.instanceURL(base, inst)
	c := converter{instanceURL: url}
	ds := c.dataset(h.elems, true)
	if h.hasPixel {
		vr := "OW"
		if h.pixelLength < 0 {
			vr = "OB"
		}
		ds[dicomjson.TagPixelData] = &dicomjson.Element{VR: vr, BulkDataURI: url + "/bulkdata/" + dicomjson.TagPixelData}
	}
	ds.SetString(dicomjson.TagRetrieveURL, "UR", url)
	b, err := ds.MarshalJSON()
	if err != nil {
		return nil, fmt.Errorf("folder image source: metadata of %s: %w", inst.rel, err)
	}
	return b, nil
}

func (s *Source) serveMetadata(w http.ResponseWriter, r *http.Request, base string, insts []*instance) error {
	ctype, err := negotiateJSON(parseAccept(r))
	if err != nil {
		return err
	}
	first, err := s.metadata(base, insts[0])
	if err != nil {
		return err
	}
	h := w.Header()
	h.Set("Content-Type", ctype)
	h.Set("Cache-Control", "private")
	w.WriteHeader(http.StatusOK)
	if isHead(r) {
		return nil
	}
	// Instances go out in chunks of metadataChunk bytes, not one by one:
	// a response encoder (Caddy's encode) decides whether to compress on
	// the first write, and a lone "[" is too short to be compressed.
	bw := bufio.NewWriterSize(w, metadataChunk)
	if _, err := bw.WriteString("["); err != nil {
		return fmt.Errorf("folder image source: send metadata: %w", err)
	}
	for i, inst := range insts {
		b := first
		if i > 0 {
			if err := r.Context().Err(); err != nil {
				return fmt.Errorf("folder image source: metadata interrupted: %w", err)
			}
			if b, err = s.metadata(base, inst); err != nil {
				return err
			}
			if _, err := bw.WriteString(","); err != nil {
				return fmt.Errorf("folder image source: send metadata: %w", err)
			}
		}
		if _, err := bw.Write(b); err != nil {
			return fmt.Errorf("folder image source: send metadata: %w", err)
		}
		if bw.Buffered() >= metadataChunk/2 {
			if err := bw.Flush(); err != nil {
				return fmt.Errorf("folder image source: send metadata: %w", err)
			}
			flush(w)
		}
	}
	if _, err := bw.WriteString("]"); err != nil {
		return fmt.Errorf("folder image source: send metadata: %w", err)
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("folder image source: send metadata: %w", err)
	}
	return nil
}

// metadataChunk is the size of the metadata chunks written to the client.
const metadataChunk = 32 << 10

// pixels reads native frames of one instance.
type pixels struct {
	inst *instance
	f    *os.File
	h    *header
	ip   imagePixel
	mem  []byte // whole pixel data of a deflated file
}

// openPixels checks that the instance has native pixel data that frames
// can be cut from. The errors are client-facing.
func openPixels(inst *instance) (*pixels, error) {
	if inst.rows <= 0 || inst.cols <= 0 {
		return nil, imagesource.Errorf(http.StatusNotFound, "not-found", "instance %s has no pixel data", inst.sopUID)
	}
	if !isNative(inst.ts) {
		return nil, notAcceptable("instance %s is stored compressed (transfer syntax %s); this image source serves native frames only and does not transcode", inst.sopUID, inst.ts)
	}
	h, f, err := readInstanceHeader(inst)
	if err != nil {
		return nil, err
	}
	px := &pixels{inst: inst, f: f, h: h, ip: h.imagePixel()}
	if !h.hasPixel {
		f.Close()
		return nil, imagesource.Errorf(http.StatusNotFound, "not-found", "instance %s has no pixel data", inst.sopUID)
	}
	ip := px.ip
	switch {
	case ip.frameSize <= 0 || ip.bitsAllocated%8 != 0 && ip.bitsAllocated != 1:
		f.Close()
		return nil, notAcceptable("instance %s has a pixel layout (BitsAllocated %d) this image source cannot cut into frames", inst.sopUID, ip.bitsAllocated)
	case h.pixelLength >= 0 && h.pixelLength < int64(ip.frames)*ip.frameSize:
		f.Close()
		return nil, fmt.Errorf("folder image source: %s: Pixel Data holds %d bytes, fewer than %d frames of %d bytes", inst.rel, h.pixelLength, ip.frames, ip.frameSize)
	}
	if h.pixelOffset < 0 {
		// Deflated: the only way to the pixel data is through the inflater.
		if err := px.loadDeflated(); err != nil {
			f.Close()
			return nil, err
		}
	}
	return px, nil
}

func (px *pixels) Close() error { return px.f.Close() }

func (px *pixels) loadDeflated() (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("folder image source: %s: cannot parse DICOM: %v", px.inst.rel, r)
		}
	}()
	fi, err := px.f.Stat()
	if err != nil {
		return fmt.Errorf("folder image source: stat: %w", err)
	}
	ds, err := dicom.Parse(io.NewSectionReader(px.f, 0, fi.Size()), fi.Size(), nil,
		dicom.SkipProcessingPixelDataValue(), dicom.AllowUnknownSpecificCharacterSet(), dicom.AllowMissingMetaElementGroupLength())
	if err != nil {
		return fmt.Errorf("folder image source: parse %s: %w", px.inst.rel, err)
	}
	e, err := ds.FindElementByTag(tag.PixelData)
	if err != nil {
		return fmt.Errorf("folder image source: %s: %w", px.inst.rel, err)
	}
	info, ok := e.Value.GetValue().(dicom.PixelDataInfo)
	if !ok || !info.IntentionallyUnprocessed {
		return fmt.Errorf("folder image source: %s: unexpected Pixel Data form", px.inst.rel)
	}
	if int64(len(info.UnprocessedValueData)) < int64(px.ip.frames)*px.ip.frameSize {
		return fmt.Errorf("folder image source: %s: Pixel Data is shorter than its frames", px.inst.rel)
	}
	px.mem = info.UnprocessedValueData
	return nil
}

// checkFrames refuses frame numbers the instance does not have.
func (px *pixels) checkFrames(frames []int) error {
	for _, n := range frames {
		if n < 1 || n > px.ip.frames {
			return imagesource.Errorf(http.StatusNotFound, "not-found", "instance %s has %d frame(s); frame %d does not exist", px.inst.sopUID, px.ip.frames, n)
		}
	}
	return nil
}

// frame returns the bytes of frame n (1-based), little endian.
func (px *pixels) frame(n int) ([]byte, error) {
	size := px.ip.frameSize
	start := int64(n-1) * size
	buf := make([]byte, size)
	if px.mem != nil {
		copy(buf, px.mem[start:start+size])
	} else if _, err := px.f.ReadAt(buf, px.h.pixelOffset+start); err != nil {
		return nil, fmt.Errorf("folder image source: read frame %d of %s: %w", n, px.inst.rel, err)
	}
	if px.ip.bigEndian {
		switch px.ip.bitsAllocated {
		case 16:
			for i := 0; i+1 < len(buf); i += 2 {
				buf[i], buf[i+1] = buf[i+1], buf[i]
			}
		case 32:
			for i := 0; i+3 < len(buf); i += 4 {
				buf[i], buf[i+1], buf[i+2], buf[i+3] = buf[i+3], buf[i+2], buf[i+1], buf[i]
			}
		}
	}
	return buf, nil
}

const octetPartType = "application/octet-stream; transfer-syntax=" + tsExplicitLE

// serveOctets writes frames (1-based numbers) as a multipart answer, or as
// one bare body when single.
func (px *pixels) serveOctets(w http.ResponseWriter, r *http.Request, frames []int, single bool) error {
	first, err := px.frame(frames[0])
	if err != nil {
		return err
	}
	h := w.Header()
	h.Set("Cache-Control", "private")
	if single && len(frames) == 1 {
		h.Set("Content-Type", octetPartType)
		h.Set("Content-Length", strconv.Itoa(len(first)))
		w.WriteHeader(http.StatusOK)
		if isHead(r) {
			return nil
		}
		if _, err := w.Write(first); err != nil {
			return fmt.Errorf("folder image source: send frame: %w", err)
		}
		return nil
	}
	mw := multipart.NewWriter(w)
	h.Set("Content-Type", `multipart/related; type="application/octet-stream"; boundary=`+mw.Boundary())
	w.WriteHeader(http.StatusOK)
	if isHead(r) {
		return nil
	}
	for i, n := range frames {
		b := first
		if i > 0 {
			if err := r.Context().Err(); err != nil {
				return fmt.Errorf("folder image source: frames interrupted: %w", err)
			}
			if b, err = px.frame(n); err != nil {
				return err
			}
		}
		part, err := mw.CreatePart(textproto.MIMEHeader{
			"Content-Type":   {octetPartType},
			"Content-Length": {strconv.Itoa(len(b))},
		})
		if err != nil {
			return fmt.Errorf("folder image source: send frame: %w", err)
		}
		if _, err := part.Write(b); err != nil {
			return fmt.Errorf("folder image source: send frame: %w", err)
		}
		flush(w)
	}
	if err := mw.Close(); err != nil {
		return fmt.Errorf("folder image source: finish multipart: %w", err)
	}
	return nil
}

func (s *Source) serveFrames(w http.ResponseWriter, r *http.Request, p wadopath.Path, inst *instance) error {
	single, err := negotiateOctets(parseAccept(r), len(p.Frames) == 1)
	if err != nil {
		return err
	}
	if err := checkFrameNumbers(inst, p.Frames); err != nil {
		return err
	}
	px, err := openPixels(inst)
	if err != nil {
		return err
	}
	defer px.Close()
	if err := px.checkFrames(p.Frames); err != nil {
		return err
	}
	return px.serveOctets(w, r, p.Frames, single)
}

// checkFrameNumbers refuses frames beyond the indexed NumberOfFrames before
// any file is read.
func checkFrameNumbers(inst *instance, frames []int) error {
	for _, n := range frames {
		if n > inst.frames {
			return imagesource.Errorf(http.StatusNotFound, "not-found", "instance %s has %d frame(s); frame %d does not exist", inst.sopUID, inst.frames, n)
		}
	}
	return nil
}

// serveBulk serves a bulk data value: Pixel Data as native frames in one
// part, or another top-level binary value of the instance (the ones
// metadata points at with a BulkDataURI).
func (s *Source) serveBulk(w http.ResponseWriter, r *http.Request, p wadopath.Path, inst *instance) error {
	key, ok := dicomjson.NormalizeTag(p.Bulk[0])
	if !ok || len(p.Bulk) != 1 {
		return imagesource.Errorf(http.StatusNotFound, "not-found", "bulk data %s is not served", strings.Join(p.Bulk, "/"))
	}
	single, err := negotiateOctets(parseAccept(r), true)
	if err != nil {
		return err
	}
	if key == dicomjson.TagPixelData {
		px, err := openPixels(inst)
		if err != nil {
			return err
		}
		defer px.Close()
		return px.servePixelBulk(w, r, single)
	}
	value, err := topLevelBytes(inst, key)
	if err != nil {
		return err
	}
	h := w.Header()
	h.Set("Cache-Control", "private")
	if single {
		h.Set("Content-Type", "application/octet-stream")
		h.Set("Content-Length", strconv.Itoa(len(value)))
		w.WriteHeader(http.StatusOK)
		if !isHead(r) {
			if _, err := w.Write(value); err != nil {
				return fmt.Errorf("folder image source: send bulk data: %w", err)
			}
		}
		return nil
	}
	mw := multipart.NewWriter(w)
	h.Set("Content-Type", `multipart/related; type="application/octet-stream"; boundary=`+mw.Boundary())
	w.WriteHeader(http.StatusOK)
	if isHead(r) {
		return nil
	}
	part, err := mw.CreatePart(textproto.MIMEHeader{
		"Content-Type":   {"application/octet-stream"},
		"Content-Length": {strconv.Itoa(len(value))},
	})
	if err == nil {
		_, err = part.Write(value)
	}
	if err == nil {
		err = mw.Close()
	}
	if err != nil {
		return fmt.Errorf("folder image source: send bulk data: %w", err)
	}
	return nil
}

// servePixelBulk sends the whole Pixel Data (every frame, little endian) as
// one part, reading one frame at a time.
func (px *pixels) servePixelBulk(w http.ResponseWriter, r *http.Request, single bool) error {
	total := int64(px.ip.frames) * px.ip.frameSize
	first, err := px.frame(1)
	if err != nil {
		return err
	}
	h := w.Header()
	h.Set("Cache-Control", "private")
	var out io.Writer = w
	var mw *multipart.Writer
	if single {
		h.Set("Content-Type", octetPartType)
		h.Set("Content-Length", strconv.FormatInt(total, 10))
		w.WriteHeader(http.StatusOK)
	} else {
		mw = multipart.NewWriter(w)
		h.Set("Content-Type", `multipart/related; type="application/octet-stream"; boundary=`+mw.Boundary())
		w.WriteHeader(http.StatusOK)
		if isHead(r) {
			return nil
		}
		if out, err = mw.CreatePart(textproto.MIMEHeader{
			"Content-Type":   {octetPartType},
			"Content-Length": {strconv.FormatInt(total, 10)},
		}); err != nil {
			return fmt.Errorf("folder image source: send bulk data: %w", err)
		}
	}
	if isHead(r) {
		return nil
	}
	for n := 1; n <= px.ip.frames; n++ {
		b := first
		if n > 1 {
			if err := r.Context().Err(); err != nil {
				return fmt.Errorf("folder image source: bulk data interrupted: %w", err)
			}
			if b, err = px.frame(n); err != nil {
				return err
			}
		}
		if _, err := out.Write(b); err != nil {
			return fmt.Errorf("folder image source: send bulk data: %w", err)
		}
		flush(w)
	}
	if mw != nil {
		if err := mw.Close(); err != nil {
			return fmt.Errorf("folder image source: finish multipart: %w", err)
		}
	}
	return nil
}

// topLevelBytes returns the value of a top-level binary element other than
// Pixel Data (elements after Pixel Data are not read).
func topLevelBytes(inst *instance, key string) ([]byte, error) {
	h, f, err := readInstanceHeader(inst)
	if err != nil {
		return nil, err
	}
	f.Close()
	for _, e := range h.elems {
		if tagKey(e.Tag) != key || e.Tag.Group == 0x0002 {
			continue
		}
		if e.Value != nil && e.Value.ValueType() == dicom.Bytes {
			b, _ := e.Value.GetValue().([]byte)
			return b, nil
		}
		break
	}
	return nil, imagesource.Errorf(http.StatusNotFound, "not-found", "instance %s has no bulk data %s", inst.sopUID, key)
}

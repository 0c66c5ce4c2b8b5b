package integration

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"image"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"
	"github.com/suyashkumar/dicom"
	"github.com/suyashkumar/dicom/pkg/tag"

	"github.com/smart-imaging/smart_imaging/authz/studytoken"
	"github.com/smart-imaging/smart_imaging/imagesource/dicomjson"
	"github.com/smart-imaging/smart_imaging/internal/dcmqrscp"
	"github.com/smart-imaging/smart_imaging/internal/orthanc"
)

// The same-behaviour tests: one table of behaviours, each run against the
// folder source (examples/demo/studies read from disk), the dicomweb
// source (the same files uploaded to a real Orthanc) and the dimse source
// (a second Orthanc's DICOM port with C-GET, and dcmtk's dcmqrscp with
// C-MOVE), through one Caddy.
// Every behaviour returns an observation, a flat map of facts; the two
// sources' observations must be equal, and each behaviour also checks its
// facts against the corpus read with the DICOM library.
//
// Where the two sources legitimately differ, the observations leave the
// difference out; it is listed here so that nobody mistakes it for an
// accident.
//
// Headers and framing:
//   - Multipart boundaries differ. Orthanc's frame answers carry the
//     transfer syntax inside the quoted type parameter
//     (type="application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"),
//     the folder source's say type="application/octet-stream" and put the
//     transfer syntax on each part's Content-Type. Orthanc's parts also
//     carry MIME-Version, and its frame parts a Content-Location (rewritten
//     onto the gateway); the folder source's parts have neither.
//   - Proxied answers carry "Via: 1.1 Caddy" (Caddy's reverse proxy).
//
// ImagingStudy:
//   - series.instance is listed by the folder source (it has every file
//     indexed) and absent from the dicomweb source, which would need one
//     more QIDO-RS call per series for it.
//
// Metadata:
//   - Orthanc's "Full" metadata is Orthanc's copy of the attributes, the
//     folder source's the file's; only the attributes compared below are
//     required to agree. The folder source adds RetrieveURL (0008,1190) at
//     instance level, Orthanc does not.
//   - The pixel data's BulkDataURI ends in ".../bulkdata/7FE00010" (folder)
//     or Orthanc's own ".../bulk/7fe00010" (allowed through the gateway);
//     both are under the instance's gateway URL and give the same bytes.
//
// DIMSE:
//   - The network carries data sets, not files: each part's file meta is
//     the gateway's, and Orthanc re-encodes sequences with explicit
//     lengths. DIMSE parts are compared by content (contentSHA: every
//     element's value and the pixel data bytes), not byte for byte.
//   - dcmqrscp's C-FIND answers hold only the keys its database keeps: no
//     series description, body part, series date and time, or timezone
//     (its study start reads as UTC). withoutUnqueried leaves those out.
//   - The dimse source serves everything else with the folder source's
//     code over its cache, so it behaves as the folder source there.
//
// What one source can do and the other cannot (not in the table):
//   - A bare application/octet-stream frame: the folder source answers
//     200; Orthanc refuses (400, passed on). (A bare application/dicom
//     instance and single-part bulk data work on both: the dicomweb source
//     asks Orthanc for multipart and sends the one part.)
//   - A transfer-syntax other than the stored one: the folder source does
//     not transcode (406); Orthanc transcodes (200).
//   - thumbnail: the folder source renders one; Orthanc 1.7 has none (404).
//   - A frame number beyond NumberOfFrames: the folder source says 404,
//     Orthanc 400 (passed on as 400).

// sourceUnderTest is one image source behind its two routes.
type sourceUnderTest struct {
	name string // "folder", "dicomweb", "dimse-…"
	// reencodes is set for DIMSE sources: the network carries data sets
	// (the file meta group is the gateway's) and the PACS may re-encode
	// them, so their parts equal the corpus in content, not in bytes.
	reencodes bool
	// fewQueryKeys is set for a PACS whose C-FIND answers lack series
	// description, body part, series date and time and the timezone
	// (dcmqrscp's database holds only the standard's required keys).
	fewQueryKeys bool
	route        string // patient-bound route prefix
	open         string // all-studies route prefix
	patient      searchResult
	all          searchResult
}

// dimsePeer is a DIMSE PACS holding the demo studies and how the gateway
// reaches it.
type dimsePeer struct {
	route            string // route prefix; the all-studies route adds "-open"
	addr, aet        string
	retrieve, listen string // c-get or c-move (with the receiver's address)
	fewQueryKeys     bool   // the PACS answers few C-FIND keys (see withoutUnqueried)
	// cacheDir holds the routes' caches: the test's own directory, since
	// caddytest leaves the last config loaded (its cleanup never runs).
	cacheDir string
}

// dimseRoutes serves the demo studies from DIMSE peers with the same
// authorizers as sourcesConfig.
func dimseRoutes(peers []dimsePeer, key string) string {
	var b strings.Builder
	for _, p := range peers {
		for _, open := range []bool{false, true} {
			route, authz, lookup, listen := p.route, "patient "+demoPatient+" mrn "+demoMRN, "studies-by-mrn", ""
			if open {
				route, authz, lookup = p.route+"-open", "disable_authz_checks", "all-studies"
			}
			if p.listen != "" && !open {
				listen = "\n\t\t\t\tlisten " + p.listen
			}
			if p.cacheDir != "" {
				listen += "\n\t\t\t\tcache_dir " + p.cacheDir
			}
			retrieve := p.retrieve
			if open && retrieve == "c-move" {
				// One receiver per address: the open route retrieves
				// with C-GET from the same peer when it can.
				retrieve = "c-get"
			}
			fmt.Fprintf(&b, "\thandle_path %s/* {\n\t\tsmart_imaging {\n\t\t\tauthz mock {\n\t\t\t\t%s\n\t\t\t}\n"+
				"\t\t\timages dimse %s {\n\t\t\t\tcalled_ae %s\n\t\t\t\tcalling_ae %s\n\t\t\t\tretrieve %s%s\n\t\t\t\tlookup %s\n\t\t\t\ttimeout 20s\n\t\t\t}\n"+
				"\t\t\tstudy_token_key %s\n\t\t}\n\t}\n",
				route, authz, p.addr, p.aet, dimseGatewayAE, retrieve, listen, lookup, key)
		}
	}
	return b.String()
}

// dimseGatewayAE is the gateway's AE title in the DIMSE tests.
const dimseGatewayAE = "SMART-IMAGING"

// sourcesConfig serves the demo studies from the folder (/folder, /folder-open),
// from Orthanc (/pacs, /pacs-open) and from the DIMSE peers, with the same
// authorizers.
func sourcesConfig(pacs *orthanc.Server, peers ...dimsePeer) string {
	studies, _ := filepath.Abs("../examples/demo/studies")
	key := base64.StdEncoding.EncodeToString(testKey)
	return fmt.Sprintf(testGlobals+`	grace_period 2s
}
http://localhost:9080 {
	handle_path /folder/* {
		smart_imaging {
			authz mock {
				patient %[5]s mrn %[6]s
			}
			images folder %[1]s {
				lookup studies-by-mrn
			}
			study_token_key %[4]s
		}
	}
	handle_path /folder-open/* {
		smart_imaging {
			authz mock {
				disable_authz_checks
			}
			images folder %[1]s {
				lookup all-studies
			}
			study_token_key %[4]s
		}
	}
	handle_path /pacs/* {
		smart_imaging {
			authz mock {
				patient %[5]s mrn %[6]s
			}
			images dicomweb %[2]s {
				lookup studies-by-mrn
				basic_auth %[3]s
			}
			study_token_key %[4]s
		}
	}
	handle_path /pacs-open/* {
		smart_imaging {
			authz mock {
				disable_authz_checks
			}
			images dicomweb %[2]s {
				lookup all-studies
				basic_auth %[3]s
			}
			study_token_key %[4]s
		}
	}
%[7]s}
`, studies, pacs.DICOMwebURL(), pacs.Username()+" "+pacs.Password(), key, demoPatient, demoMRN, dimseRoutes(peers, key))
}

// corpusFile is one demo file as the DICOM library reads it.
type corpusFile struct {
	instanceInfo
	sha                     string // of the whole file
	contentSHA              string // of its content (see contentSHA)
	modality                string
	seriesNumber            string
	studyDate, studyTime    string
	rows, cols, bytesPerPix int
	frame1                  []byte // the first frame's native pixel bytes
}

// sourcesCorpus is the demo folder read independently of the gateway.
type sourcesCorpus struct {
	corpus
	files map[string]corpusFile // SOP Instance UID → file
}

func readSourcesCorpus(t *testing.T) sourcesCorpus {
	t.Helper()
	c := sourcesCorpus{corpus: readCorpus(t), files: map[string]corpusFile{}}
	for _, insts := range c.byStudy {
		for _, in := range insts {
			raw, err := os.ReadFile(in.file)
			if err != nil {
				t.Fatal(err)
			}
			ds, err := dicom.Parse(bytes.NewReader(raw), int64(len(raw)), nil)
			if err != nil {
				t.Fatalf("%s: %v", in.file, err)
			}
			str := func(tg tag.Tag) string {
				e, err := ds.FindElementByTag(tg)
				if err != nil {
					return ""
				}
				if v, ok := e.Value.GetValue().([]string); ok && len(v) > 0 {
					return strings.TrimSpace(v[0])
				}
				return ""
			}
			num := func(tg tag.Tag) int {
				e, err := ds.FindElementByTag(tg)
				if err != nil {
					return 0
				}
				if v, ok := e.Value.GetValue().([]int); ok && len(v) > 0 {
					return v[0]
				}
				return 0
			}
			sum := sha256.Sum256(raw)
			f := corpusFile{instanceInfo: in, sha: hex.EncodeToString(sum[:]), contentSHA: contentSHA(raw),
				modality: str(tag.Modality), seriesNumber: str(tag.SeriesNumber),
				studyDate: str(tag.StudyDate), studyTime: str(tag.StudyTime),
				rows: num(tag.Rows), cols: num(tag.Columns),
				bytesPerPix: num(tag.BitsAllocated) / 8 * max(num(tag.SamplesPerPixel), 1)}
			// Native pixel data is the file's last element: frame 1 starts
			// frames × frame size before the end.
			size := f.rows * f.cols * f.bytesPerPix
			if size == 0 || in.frames*size > len(raw) {
				t.Fatalf("%s: no native pixel data (%d×%d, %d bytes per pixel)", in.file, f.rows, f.cols, f.bytesPerPix)
			}
			start := len(raw) - in.frames*size
			f.frame1 = raw[start : start+size]
			c.files[in.sop] = f
		}
	}
	return c
}

// seriesOf groups a study's files by series UID, each sorted by SOP UID.
func (c sourcesCorpus) seriesOf(study string) map[string][]corpusFile {
	out := map[string][]corpusFile{}
	for _, in := range c.byStudy[study] {
		out[in.series] = append(out[in.series], c.files[in.sop])
	}
	for _, fs := range out {
		sort.Slice(fs, func(i, j int) bool { return fs[i].sop < fs[j].sop })
	}
	return out
}

// observation is what a behaviour saw on one source: fact name → value.
type observation map[string]string

type sourcesBehaviour struct {
	name string
	// observe runs the behaviour's requests against one source, checks
	// them against the corpus, and returns what the other source must
	// match.
	observe func(t *testing.T, tc *caddytest.Tester, c sourcesCorpus, s *sourceUnderTest) observation
}

// sourcesBehaviours is the table run against both sources.
var sourcesBehaviours = []sourcesBehaviour{
	{"patient search lists the patient's studies", func(t *testing.T, _ *caddytest.Tester, c sourcesCorpus, s *sourceUnderTest) observation {
		got, want := keys(s.patient.studies), keys(c.byPatient[demoMRN])
		if strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("studies = %v, want exactly the patient's %v", got, want)
		}
		obs := observation{"studies": strings.Join(got, " ")}
		for uid, st := range s.patient.studies {
			subj, _ := st["subject"].(map[string]any)
			obs[uid+" subject"] = fmt.Sprint(subj["reference"])
			if subj["reference"] != "Patient/"+demoPatient {
				t.Errorf("study %s subject = %v", uid, subj["reference"])
			}
		}
		return obs
	}},
	{"all-studies search lists every study", func(t *testing.T, _ *caddytest.Tester, c sourcesCorpus, s *sourceUnderTest) observation {
		got, want := keys(s.all.studies), keys(c.byStudy)
		if strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("studies = %v, want %v", got, want)
		}
		return observation{"studies": strings.Join(got, " ")}
	}},
	{"ImagingStudy essentials", func(t *testing.T, _ *caddytest.Tester, c sourcesCorpus, s *sourceUnderTest) observation {
		obs := observation{}
		for prefix, res := range map[string]searchResult{"patient": s.patient, "all": s.all} {
			for uid, st := range res.studies {
				for k, v := range studyEssentials(st) {
					obs[prefix+" "+uid+" "+k] = v
				}
			}
		}
		// Against the corpus (the all-studies answer holds every study).
		for uid, st := range s.all.studies {
			ess := studyEssentials(st)
			series := c.seriesOf(uid)
			mods := map[string]bool{}
			want := observation{
				"identifier":        "urn:dicom:uid|urn:oid:" + uid,
				"numberOfSeries":    strconv.Itoa(len(series)),
				"numberOfInstances": strconv.Itoa(len(c.byStudy[uid])),
			}
			for se, files := range series {
				f := files[0]
				mods["http://dicom.nema.org/resources/ontology/DCM|"+f.modality] = true
				want["series "+se+" number"] = f.seriesNumber
				want["series "+se+" modality"] = "http://dicom.nema.org/resources/ontology/DCM|" + f.modality
				want["series "+se+" numberOfInstances"] = strconv.Itoa(len(files))
			}
			want["modality"] = strings.Join(keys(mods), " ")
			order := keys(series)
			sort.SliceStable(order, func(i, j int) bool {
				a, _ := strconv.Atoi(series[order[i]][0].seriesNumber)
				b, _ := strconv.Atoi(series[order[j]][0].seriesNumber)
				return a < b
			})
			want["series order"] = strings.Join(order, " ")
			for k, v := range want {
				if ess[k] != v {
					t.Errorf("study %s: %s = %q, want %q", uid, k, ess[k], v)
				}
			}
			for k := range ess {
				if strings.HasPrefix(k, "series ") && strings.HasSuffix(k, " number") && want[k] == "" {
					t.Errorf("study %s: %s is not a series of the corpus", uid, k)
				}
			}
			f := c.files[c.byStudy[uid][0].sop]
			if d, tm := f.studyDate, f.studyTime; len(d) == 8 && len(tm) >= 6 {
				prefix := d[:4] + "-" + d[4:6] + "-" + d[6:8] + "T" + tm[:2] + ":" + tm[2:4] + ":" + tm[4:6]
				if !strings.HasPrefix(ess["started"], prefix) {
					t.Errorf("study %s: started = %q, want %s…", uid, ess["started"], prefix)
				}
			} else {
				t.Errorf("study %s: corpus StudyDate/StudyTime %q %q", uid, d, tm)
			}
		}
		return obs
	}},
	{"study, series and instance retrieve give the files' bytes", func(t *testing.T, tc *caddytest.Tester, c sourcesCorpus, s *sourceUnderTest) observation {
		// Observed: each instance's content (what every source carries
		// unchanged). Checked against the corpus: the whole file, or, for
		// DIMSE sources, the content.
		obs, whole := observation{}, observation{}
		add := func(key string, parts map[string]partHash) {
			for sop, h := range parts {
				obs[key+" "+sop] = h.dataset
				whole[key+" "+sop] = h.file
			}
		}
		for uid, addr := range s.patient.endpoints {
			studyURL := addr + "/studies/" + uid
			add("study "+uid, partsBySOP(t, tc, studyURL))
			for se, files := range c.seriesOf(uid) {
				add("series "+se, partsBySOP(t, tc, studyURL+"/series/"+se))
				in := files[0]
				add("instance "+in.sop, partsBySOP(t, tc, studyURL+"/series/"+se+"/instances/"+in.sop))
			}
		}
		want := observation{}
		for _, uid := range keys(c.byPatient[demoMRN]) {
			for se, files := range c.seriesOf(uid) {
				for _, f := range files {
					h := f.sha
					if s.reencodes {
						h = f.contentSHA
					}
					want["study "+uid+" "+f.sop] = h
					want["series "+se+" "+f.sop] = h
				}
				h := files[0].sha
				if s.reencodes {
					h = files[0].contentSHA
				}
				want["instance "+files[0].sop+" "+files[0].sop] = h
			}
		}
		if s.reencodes {
			compareObservations(t, "the corpus", want, s.name, obs)
		} else {
			compareObservations(t, "the corpus", want, s.name, whole)
		}
		return obs
	}},
	{"metadata lists the instances with gateway BulkDataURIs", func(t *testing.T, tc *caddytest.Tester, c sourcesCorpus, s *sourceUnderTest) observation {
		obs := observation{}
		for uid, addr := range s.patient.endpoints {
			studyURL := addr + "/studies/" + uid
			levels := map[string]string{"study " + uid: studyURL}
			for se, files := range c.seriesOf(uid) {
				levels["series "+se] = studyURL + "/series/" + se
				levels["instance "+files[0].sop] = studyURL + "/series/" + se + "/instances/" + files[0].sop
			}
			for name, url := range levels {
				body := get(t, tc, url+"/metadata", "application/dicom+json", http.StatusOK, "application/dicom+json")
				list, err := dicomjson.DecodeList(body)
				if err != nil {
					t.Fatalf("metadata of %s: %v", name, err)
				}
				var sops []string
				for _, ds := range list {
					sop := ds.String(dicomjson.TagSOPInstanceUID)
					sops = append(sops, sop)
					f, ok := c.files[sop]
					if !ok {
						t.Errorf("metadata of %s lists %q, not an instance of the corpus", name, sop)
						continue
					}
					for _, tg := range []string{dicomjson.TagStudyInstanceUID, dicomjson.TagSeriesInstanceUID, dicomjson.TagSOPClassUID,
						dicomjson.TagPatientID, dicomjson.TagModality, dicomjson.TagRows, dicomjson.TagColumns, dicomjson.TagBitsAllocated} {
						obs[name+" "+sop+" "+tg] = strings.Join(ds.Strings(tg), "\\")
					}
					if got := ds.String(dicomjson.TagSeriesInstanceUID); got != f.series {
						t.Errorf("metadata of %s: %s in series %q, want %q", name, sop, got, f.series)
					}
					px := ds.Get(dicomjson.TagPixelData)
					if px == nil || px.BulkDataURI == "" {
						t.Errorf("metadata of %s: %s has no pixel data BulkDataURI", name, sop)
						continue
					}
					instURL := studyURL + "/series/" + f.series + "/instances/" + sop + "/"
					if !strings.HasPrefix(px.BulkDataURI, instURL) {
						t.Errorf("metadata of %s: BulkDataURI %s is not under the gateway's %s", name, px.BulkDataURI, instURL)
					}
					obs[name+" "+sop+" pixel data"] = "BulkDataURI under the instance URL"
					if strings.HasPrefix(name, "instance ") {
						parts := retrieveMultipart(t, tc, px.BulkDataURI, `multipart/related; type="application/octet-stream"`, "application/octet-stream")
						if len(parts) != 1 {
							t.Errorf("bulk data %s: %d parts, want 1", px.BulkDataURI, len(parts))
							continue
						}
						if want := f.rows * f.cols * f.bytesPerPix * f.frames; len(parts[0]) != want {
							t.Errorf("bulk data %s: %d bytes, want %d", px.BulkDataURI, len(parts[0]), want)
						}
						if !bytes.HasPrefix(parts[0], f.frame1) {
							t.Errorf("bulk data %s does not start with the file's first frame", px.BulkDataURI)
						}
						obs[name+" bulk data sha256"] = sha(parts[0])
					}
				}
				sort.Strings(sops)
				obs[name+" instances"] = strings.Join(sops, " ")
				var want []string
				for _, in := range c.byStudy[uid] {
					if name == "study "+uid || name == "series "+in.series || name == "instance "+in.sop {
						want = append(want, in.sop)
					}
				}
				sort.Strings(want)
				if strings.Join(sops, " ") != strings.Join(want, " ") {
					t.Errorf("metadata of %s lists %v, want %v", name, sops, want)
				}
			}
		}
		return obs
	}},
	{"frames/1 gives the first frame's pixel bytes", func(t *testing.T, tc *caddytest.Tester, c sourcesCorpus, s *sourceUnderTest) observation {
		obs := observation{}
		for uid, addr := range s.patient.endpoints {
			for se, files := range c.seriesOf(uid) {
				f := files[0]
				url := addr + "/studies/" + uid + "/series/" + se + "/instances/" + f.sop + "/frames/1"
				parts := retrieveMultipart(t, tc, url, `multipart/related; type="application/octet-stream"`, "application/octet-stream")
				if len(parts) != 1 {
					t.Errorf("%s: %d parts, want 1", url, len(parts))
					continue
				}
				if !bytes.Equal(parts[0], f.frame1) {
					t.Errorf("%s: %d bytes that differ from the file's first frame (%d bytes)", url, len(parts[0]), len(f.frame1))
				}
				obs[f.sop] = sha(parts[0])
			}
		}
		return obs
	}},
	{"rendered PNG has the image's dimensions", func(t *testing.T, tc *caddytest.Tester, c sourcesCorpus, s *sourceUnderTest) observation {
		obs := observation{}
		for uid, addr := range s.patient.endpoints {
			for se, files := range c.seriesOf(uid) {
				f := files[0]
				url := addr + "/studies/" + uid + "/series/" + se + "/instances/" + f.sop + "/rendered"
				body := get(t, tc, url, "image/png", http.StatusOK, "image/png")
				img, format, err := image.Decode(bytes.NewReader(body))
				if err != nil {
					t.Errorf("%s does not decode: %v", url, err)
					continue
				}
				b := img.Bounds()
				if format != "png" || b.Dx() != f.cols || b.Dy() != f.rows {
					t.Errorf("%s: %s %dx%d, want png %dx%d", url, format, b.Dx(), b.Dy(), f.cols, f.rows)
				}
				obs[f.sop] = fmt.Sprintf("%s %dx%d", format, b.Dx(), b.Dy())
			}
		}
		return obs
	}},
	{"image answers are private to the caller", func(t *testing.T, tc *caddytest.Tester, c sourcesCorpus, s *sourceUnderTest) observation {
		obs := observation{}
		for uid, addr := range s.patient.endpoints {
			for se, files := range c.seriesOf(uid) {
				inst := addr + "/studies/" + uid + "/series/" + se + "/instances/" + files[0].sop
				for name, r := range map[string]struct{ url, accept string }{
					"study":    {addr + "/studies/" + uid, `multipart/related; type="application/dicom"`},
					"metadata": {inst + "/metadata", "application/dicom+json"},
					"frames":   {inst + "/frames/1", `multipart/related; type="application/octet-stream"`},
					"rendered": {inst + "/rendered", "image/png"},
				} {
					req, _ := http.NewRequest(http.MethodGet, r.url, nil)
					req.Header.Set("Accept", r.accept)
					resp, err := tc.Client.Do(req)
					if err != nil {
						t.Fatalf("GET %s: %v", r.url, err)
					}
					resp.Body.Close()
					cc := resp.Header.Get("Cache-Control")
					if resp.StatusCode != http.StatusOK || !strings.Contains(cc, "private") && !strings.Contains(cc, "no-store") {
						t.Errorf("%s of %s: status %d, Cache-Control %q; want 200 and private or no-store", name, files[0].sop, resp.StatusCode, cc)
					}
					obs[name+" "+files[0].sop] = cc
				}
			}
		}
		return obs
	}},
	{"unknown series under the study is 404", func(t *testing.T, tc *caddytest.Tester, c sourcesCorpus, s *sourceUnderTest) observation {
		obs := observation{}
		for uid, addr := range s.patient.endpoints {
			url := addr + "/studies/" + uid + "/series/1.2.826.0.1.3680043.99.404"
			obs[uid] = statusOf(t, tc, url, `multipart/related; type="application/dicom"`, http.StatusNotFound)
			obs[uid+" metadata"] = statusOf(t, tc, url+"/metadata", "application/dicom+json", http.StatusNotFound)
		}
		return obs
	}},
	{"Accept: application/pdf on a study is 406", func(t *testing.T, tc *caddytest.Tester, c sourcesCorpus, s *sourceUnderTest) observation {
		obs := observation{}
		for uid, addr := range s.patient.endpoints {
			// (application/zip is a download: TestDICOMwebRoot.)
			obs[uid] = statusOf(t, tc, addr+"/studies/"+uid, "application/pdf", http.StatusNotAcceptable)
		}
		return obs
	}},
	{"study token refusals", func(t *testing.T, tc *caddytest.Tester, c sourcesCorpus, s *sourceUnderTest) observation {
		uid := keys(s.patient.studies)[0]
		addr := s.patient.endpoints[uid]
		token := addr[strings.LastIndex(addr, "/")+1:]
		wado := strings.TrimSuffix(addr, token)
		var otherStudy string // a study of another patient
		for _, st := range keys(c.byStudy) {
			if !c.byPatient[demoMRN][st] {
				otherStudy = st
				break
			}
		}
		kr, err := studytoken.NewKeyring(testKey)
		if err != nil {
			t.Fatal(err)
		}
		now := time.Now()
		expired, err := kr.Mint(studytoken.Claims{StudyUID: uid, Patient: demoPatient, Route: s.route,
			Expiry: now.Add(-time.Minute), IssuedAt: now.Add(-time.Hour)})
		if err != nil {
			t.Fatal(err)
		}
		tampered := []byte(token)
		i := len(tampered) / 2
		if tampered[i] == '.' {
			i++
		}
		tampered[i] ^= 1
		accept := `multipart/related; type="application/dicom"`
		return observation{
			"tampered token":                statusOf(t, tc, wado+string(tampered)+"/studies/"+uid, accept, http.StatusForbidden),
			"expired token":                 statusOf(t, tc, wado+expired+"/studies/"+uid, accept, http.StatusForbidden),
			"path study differs from token": statusOf(t, tc, wado+token+"/studies/"+otherStudy, accept, http.StatusForbidden),
			"metadata of another study":     statusOf(t, tc, wado+token+"/studies/"+otherStudy+"/metadata", "application/dicom+json", http.StatusForbidden),
		}
	}},
}

// studyEssentials flattens the parts of an ImagingStudy both sources must
// agree on.
func studyEssentials(st map[string]any) observation {
	obs := observation{}
	if ids, _ := st["identifier"].([]any); len(ids) > 0 {
		id, _ := ids[0].(map[string]any)
		obs["identifier"] = fmt.Sprintf("%v|%v", id["system"], id["value"])
	}
	obs["numberOfSeries"] = jsonNumber(st["numberOfSeries"])
	obs["numberOfInstances"] = jsonNumber(st["numberOfInstances"])
	obs["started"] = fmt.Sprint(st["started"])
	obs["description"] = fmt.Sprint(st["description"])
	var mods []string
	for _, m := range asList(st["modality"]) {
		mods = append(mods, coding(m))
	}
	sort.Strings(mods)
	obs["modality"] = strings.Join(mods, " ")
	var order []string
	for _, se := range asList(st["series"]) {
		uid := fmt.Sprint(se["uid"])
		order = append(order, uid)
		obs["series "+uid+" number"] = jsonNumber(se["number"])
		obs["series "+uid+" modality"] = coding(se["modality"])
		obs["series "+uid+" numberOfInstances"] = jsonNumber(se["numberOfInstances"])
		obs["series "+uid+" description"] = fmt.Sprint(se["description"])
		obs["series "+uid+" bodySite"] = fmt.Sprint(se["bodySite"])
		obs["series "+uid+" started"] = fmt.Sprint(se["started"])
	}
	obs["series order"] = strings.Join(order, " ")
	return obs
}

func asList(v any) []map[string]any {
	l, _ := v.([]any)
	out := make([]map[string]any, 0, len(l))
	for _, x := range l {
		if m, ok := x.(map[string]any); ok {
			out = append(out, m)
		}
	}
	return out
}

func coding(v any) string {
	m, _ := v.(map[string]any)
	return fmt.Sprintf("%v|%v", m["system"], m["code"])
}

func jsonNumber(v any) string {
	if f, ok := v.(float64); ok {
		return strconv.FormatFloat(f, 'f', -1, 64)
	}
	return fmt.Sprint(v)
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// contentSHA is the sha256 of a Part 10 file's content, independent of
// its encoding: every element after the file meta with its VR and value,
// and the pixel data's bytes ("" when b does not parse). DIMSE peers
// re-encode what they send (Orthanc writes sequences with explicit
// lengths), so their parts are compared by content.
func contentSHA(b []byte) string {
	ds, err := dicom.Parse(bytes.NewReader(b), int64(len(b)), nil, dicom.SkipProcessingPixelDataValue())
	if err != nil {
		return ""
	}
	h := sha256.New()
	for _, e := range ds.Elements {
		if e.Tag.Group == 0x0002 {
			continue
		}
		if info, ok := e.Value.GetValue().(dicom.PixelDataInfo); ok && e.Tag == tag.PixelData {
			h.Write(info.UnprocessedValueData)
			continue
		}
		fmt.Fprintf(h, "%v %s %s\n", e.Tag, e.RawValueRepresentation, e.Value.String())
	}
	return hex.EncodeToString(h.Sum(nil))
}

// partHash is a retrieved part's sha256, whole and of its data set.
type partHash struct{ file, dataset string }

// partsBySOP retrieves a multipart/related application/dicom answer and
// returns SOP Instance UID → the sha256 of each part.
func partsBySOP(t *testing.T, tc *caddytest.Tester, url string) map[string]partHash {
	t.Helper()
	out := map[string]partHash{}
	for i, p := range retrieveMultipart(t, tc, url, `multipart/related; type="application/dicom"`, "application/dicom") {
		ds, err := dicom.Parse(bytes.NewReader(p), int64(len(p)), nil, dicom.SkipPixelData())
		if err != nil {
			t.Errorf("%s: part %d is not DICOM: %v", url, i, err)
			continue
		}
		e, err := ds.FindElementByTag(tag.SOPInstanceUID)
		if err != nil {
			t.Errorf("%s: part %d has no SOP Instance UID", url, i)
			continue
		}
		v, _ := e.Value.GetValue().([]string)
		if len(v) == 0 {
			t.Errorf("%s: part %d has an empty SOP Instance UID", url, i)
			continue
		}
		sop := strings.TrimRight(v[0], " \x00")
		if _, dup := out[sop]; dup {
			t.Errorf("%s: instance %s sent twice", url, sop)
		}
		out[sop] = partHash{file: sha(p), dataset: contentSHA(p)}
	}
	return out
}

// statusOf checks that url answers want with an OperationOutcome and
// returns the status for the observation.
func statusOf(t *testing.T, tc *caddytest.Tester, url, accept string, want int) string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("Accept", accept)
	resp, err := tc.Client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	var body bytes.Buffer
	body.ReadFrom(resp.Body)
	if resp.StatusCode != want {
		t.Errorf("GET %s (Accept %s): status %d, want %d; body %.300s", url, accept, resp.StatusCode, want, body.String())
	}
	ct := resp.Header.Get("Content-Type")
	if !strings.HasPrefix(ct, "application/fhir+json") || !strings.Contains(body.String(), `"OperationOutcome"`) {
		t.Errorf("GET %s: status %d answered %q %.200s; want an OperationOutcome", url, resp.StatusCode, ct, body.String())
	}
	return strconv.Itoa(resp.StatusCode) + " " + strings.SplitN(ct, ";", 2)[0]
}

// compareObservations reports every fact on which a and b differ.
func compareObservations(t *testing.T, aName string, a observation, bName string, b observation) bool {
	t.Helper()
	all := map[string]bool{}
	for k := range a {
		all[k] = true
	}
	for k := range b {
		all[k] = true
	}
	same := true
	for _, k := range keys(all) {
		av, aok := a[k]
		bv, bok := b[k]
		if aok == bok && av == bv {
			continue
		}
		same = false
		show := func(v string, ok bool) string {
			if !ok {
				return "(absent)"
			}
			return strconv.Quote(v)
		}
		t.Errorf("%s: %s says %s, %s says %s", k, aName, show(av, aok), bName, show(bv, bok))
	}
	return same
}

// TestSourcesBehaveAlike runs one table of behaviours against the folder
// source, the dicomweb source (Orthanc) and the dimse source (Orthanc's
// DICOM port with C-GET, dcmtk's dcmqrscp with C-MOVE) holding the same
// studies.
func TestSourcesBehaveAlike(t *testing.T) {
	pacs := orthanc.Require(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := pacs.Upload(ctx, "../examples/demo/studies"); err != nil {
		t.Fatal(err)
	}
	peers := startDIMSEPeers(t, ctx)
	c := readSourcesCorpus(t)

	tc := caddytest.NewTester(t)
	tc.InitServer(sourcesConfig(pacs, peers...), "caddyfile")

	sources := []*sourceUnderTest{
		{name: "folder", route: "/folder", open: "/folder-open"},
		{name: "dicomweb", route: "/pacs", open: "/pacs-open"},
	}
	for _, p := range peers {
		sources = append(sources, &sourceUnderTest{name: strings.TrimPrefix(p.route, "/"), route: p.route, open: p.route + "-open",
			reencodes: true, fewQueryKeys: p.fewQueryKeys})
	}
	for _, s := range sources {
		s.patient = search(t, tc, base+s.route+"/fhir/ImagingStudy?patient="+demoPatient)
		s.all = search(t, tc, base+s.open+"/fhir/ImagingStudy")
		for uid, addr := range s.patient.endpoints {
			if !strings.HasPrefix(addr, base+s.route+"/wado/") {
				t.Fatalf("%s: study %s endpoint %s is not on the gateway route", s.name, uid, addr)
			}
		}
	}

	for _, b := range sourcesBehaviours {
		t.Run(b.name, func(t *testing.T) {
			obs := make([]observation, len(sources))
			for i, s := range sources {
				t.Run(s.name, func(t *testing.T) { obs[i] = b.observe(t, tc, c, s) })
			}
			for i := range obs {
				if obs[i] == nil {
					return // a subtest stopped early and said why
				}
			}
			if len(obs[0]) == 0 {
				t.Fatal("the behaviour observed nothing")
			}
			for i := 1; i < len(sources); i++ {
				a, b := obs[0], obs[i]
				if sources[i].fewQueryKeys {
					a, b = withoutUnqueried(a), withoutUnqueried(b)
				}
				compareObservations(t, sources[0].name, a, sources[i].name, b)
			}
		})
	}
}

// withoutUnqueried leaves out the ImagingStudy facts a PACS with few
// C-FIND keys cannot give: series description, body site and start, and
// the study's start with its timezone (dcmqrscp has no
// TimezoneOffsetFromUTC, so its times read as UTC).
func withoutUnqueried(o observation) observation {
	out := observation{}
	for k, v := range o {
		series := strings.Contains(k, " series ")
		if strings.HasSuffix(k, " started") || series && (strings.HasSuffix(k, " description") || strings.HasSuffix(k, " bodySite")) {
			continue
		}
		out[k] = v
	}
	return out
}

// startDIMSEPeers starts a second Orthanc with its DICOM port open (the
// gateway's AE registered for C-FIND, C-GET and C-MOVE) and a dcmqrscp,
// both holding the demo studies, and returns how the gateway's routes
// reach them: Orthanc with C-GET, dcmqrscp with C-MOVE into the gateway's
// receiver. Without dcmtk the test is skipped (failed under
// SIA_REQUIRE_DIMSE=1).
func startDIMSEPeers(t *testing.T, ctx context.Context) []dimsePeer {
	t.Helper()
	moveTo := freeLoopbackPort(t)
	o, err := orthanc.Start(ctx, orthanc.Options{DICOM: &orthanc.DICOMOptions{Modalities: map[string]orthanc.Modality{
		"gateway": {AET: dimseGatewayAE, Host: "127.0.0.1", Port: moveTo,
			AllowEcho: true, AllowFind: true, AllowGet: true, AllowMove: true},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { o.Stop() })
	if _, err := o.Upload(ctx, "../examples/demo/studies"); err != nil {
		t.Fatal(err)
	}
	q := dcmqrscp.Require(t, dcmqrscp.Options{GatewayAET: dimseGatewayAE, GatewayPort: moveTo})
	if err := q.Load(ctx, "../examples/demo/studies"); err != nil {
		t.Fatal(err)
	}
	return []dimsePeer{
		{route: "/dimse-orthanc", addr: o.DICOMAddr(), aet: o.DICOMAET(), retrieve: "c-get", cacheDir: t.TempDir()},
		{route: "/dimse-dcmqrscp", addr: q.Addr(), aet: dcmqrscp.AET, retrieve: "c-move", listen: "127.0.0.1:" + strconv.Itoa(moveTo), fewQueryKeys: true, cacheDir: t.TempDir()},
	}
}

// freeLoopbackPort picks a port on 127.0.0.1 that is free now.
func freeLoopbackPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

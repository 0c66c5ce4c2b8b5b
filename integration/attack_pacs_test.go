package integration

import (
	"net/http"
	"strings"
	"time"

	"github.com/smart-imaging/smart_imaging/imagesource/dicomjson"
	"github.com/smart-imaging/smart_imaging/internal/badpacs"
)

// pacsWorld is what the attacks through a misbehaving PACS need: the bad
// PACS (in front of the suite's Orthanc), patients A and B, A's study
// addresses on the route bound to A (/evil) and on the unrestricted route
// (/evilopen), both fronting the bad PACS, and the gateway's log.
type pacsWorld struct {
	evil    *badpacs.Server
	a, b    *demoPatientData
	eps     map[string]string // A's studies on /evil
	openEps map[string]string // every study on /evilopen
	logFile string
}

// attackUntrustedPACS: A holds a valid study address; the PACS behind it
// answers A's paths with B's data (the whole study swapped, or one of B's
// instances slipped in), relabels A's patient, redirects, or writes URIs
// that lead elsewhere. Metadata and DICOM objects must be refused before
// any of B's bytes leave (502), or the stream stopped (a broken
// transfer); foreign URIs must be dropped. Frames, bulk data and rendered
// images carry no identifiers: for them the PACS's mapping is trusted
// (README, Security model), so they are not attempted with swapped data.
func attackUntrustedPACS(a *attacker, w pacsWorld) {
	t := a.t
	sa, sb := w.a.studies[0], w.b.studies[0]
	ra, rb := w.a.rowsOf(sa), w.b.rowsOf(sb)
	wado := w.eps[sa]
	openWado := w.openEps[sa]
	if wado == "" || openWado == "" {
		t.Fatalf("no address for A's study %s on the bad-PACS routes", sa)
	}
	seriesA, instA := ra[0].series, ra[0].sop
	instPath := "/studies/" + sa + "/series/" + seriesA + "/instances/" + instA
	dicomAccept := `multipart/related; type="application/dicom"`

	// The other study's UIDs, in the places of A's.
	swap := map[string]string{sa: sb}
	for i, r := range ra {
		o := rb[i%len(rb)]
		if _, ok := swap[r.series]; !ok {
			swap[r.series] = o.series
		}
		swap[r.sop] = o.sop
	}
	foreign := "studies/" + sb + "/series/" + rb[0].series + "/instances/" + rb[0].sop

	// objects are the requests for DICOM objects and metadata of A's study.
	type req struct {
		name, path, accept, method string
	}
	objects := []req{
		{"study metadata", "/studies/" + sa + "/metadata", "application/dicom+json", ""},
		{"series metadata", "/studies/" + sa + "/series/" + seriesA + "/metadata", "application/dicom+json", ""},
		{"instance metadata", instPath + "/metadata", "application/dicom+json", ""},
		{"study", "/studies/" + sa, dicomAccept, ""},
		{"series", "/studies/" + sa + "/series/" + seriesA, dicomAccept, ""},
		{"instance", instPath, dicomAccept, ""},
		{"HEAD study", "/studies/" + sa, dicomAccept, http.MethodHead},
	}
	refusals := 0
	refused := func(r atkReq) {
		t.Helper()
		refusals++
		a.run(r)
	}
	misbehaved := func(what string, before int64) {
		t.Helper()
		if w.evil.Misbehaved() == before {
			t.Errorf("%s: the bad PACS never misbehaved; the attempts proved nothing", what)
		}
	}

	// Control: the bad PACS, honest, serves A's study as Orthanc does.
	w.evil.Set(badpacs.Config{Fault: badpacs.Honest})
	_, body := a.run(atkReq{name: "honest PACS: A's metadata", url: wado + "/studies/" + sa + "/metadata", accept: "application/dicom+json", want: []int{200}})
	if list, err := dicomjson.DecodeList(body); err != nil || len(list) == 0 || list[0].Get(dicomjson.TagPixelData) == nil ||
		!strings.HasPrefix(list[0].Get(dicomjson.TagPixelData).BulkDataURI, wado+"/studies/"+sa+"/") {
		t.Errorf("honest PACS: the metadata has no BulkDataURI on the gateway (%v): %.300s", err, body)
	}
	a.run(atkReq{name: "honest PACS: A's study", url: wado + "/studies/" + sa, accept: dicomAccept, want: []int{200}})

	// B's study in the place of A's.
	before := w.evil.Misbehaved()
	w.evil.Set(badpacs.Config{Fault: badpacs.SwapStudy, Swap: swap})
	for _, r := range objects {
		refused(atkReq{name: "PACS swaps in B's study: " + r.name, method: r.method, url: wado + r.path, accept: r.accept, want: []int{502}})
		refused(atkReq{name: "PACS swaps in B's study, unrestricted route: " + r.name, method: r.method, url: openWado + r.path, accept: r.accept, want: []int{502}})
	}
	misbehaved("swapped study", before)

	// One of B's instances slipped into A's answers.
	before = w.evil.Misbehaved()
	w.evil.Set(badpacs.Config{Fault: badpacs.AppendForeign, Foreign: foreign})
	for _, r := range objects[:6] {
		refused(atkReq{name: "PACS appends B's instance: " + r.name, url: wado + r.path, accept: r.accept, want: []int{502}, brokenOK: true})
	}
	misbehaved("appended instance", before)

	// A's study, labelled with a PatientID that is not A's (same length,
	// so the DICOM stays well-formed). The unrestricted route checks the
	// study only and serves it.
	before = w.evil.Misbehaved()
	relabel := strings.Repeat("0", len(demoMRN)-4) + "-999"
	w.evil.Set(badpacs.Config{Fault: badpacs.RelabelPatient, RelabelFrom: demoMRN, RelabelTo: relabel})
	for _, r := range objects {
		refused(atkReq{name: "PACS relabels the patient: " + r.name, method: r.method, url: wado + r.path, accept: r.accept, want: []int{502}})
	}
	a.run(atkReq{name: "PACS relabels the patient, unrestricted route: metadata", url: openWado + "/studies/" + sa + "/metadata", accept: "application/dicom+json", want: []int{200}})
	a.run(atkReq{name: "PACS relabels the patient, unrestricted route: study", url: openWado + "/studies/" + sa, accept: dicomAccept, want: []int{200}})
	misbehaved("relabelled patient", before)

	// Redirects elsewhere are not followed, for any resource.
	before = w.evil.Misbehaved()
	w.evil.Set(badpacs.Config{Fault: badpacs.Redirect})
	for _, r := range append(objects[:7:7],
		req{"frames", instPath + "/frames/1", `multipart/related; type="application/octet-stream"`, ""},
		req{"rendered", instPath + "/rendered", "image/jpeg", ""},
		req{"bulk data", instPath + "/bulkdata/7fe00010", "", ""}) {
		refused(atkReq{name: "PACS redirects: " + r.name, method: r.method, url: wado + r.path, accept: r.accept, want: []int{502}})
	}
	misbehaved("redirects", before)

	// URIs on another host: dropped, the answer still served.
	before = w.evil.Misbehaved()
	w.evil.Set(badpacs.Config{Fault: badpacs.ForeignURIs})
	uris := *a
	uris.needles = append(append([]needle(nil), a.needles...), needle{"a URI on " + badpacs.ForeignHost, "evil.example"})
	for _, r := range append(objects[:6:6], req{"frames", instPath + "/frames/1", `multipart/related; type="application/octet-stream"`, ""}) {
		uris.run(atkReq{name: "PACS writes foreign URIs: " + r.name, url: wado + r.path, accept: r.accept, want: []int{200}})
	}
	misbehaved("foreign URIs", before)
	w.evil.Set(badpacs.Config{Fault: badpacs.Honest})

	// Each refusal was logged as a PACS fault, naming A's study.
	deadline := time.Now().Add(5 * time.Second)
	for {
		n := 0
		for _, l := range readLogLines(t, w.logFile) {
			if strings.Contains(l, "PACS fault") && strings.Contains(l, sa) {
				n++
			}
		}
		if n >= refusals {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("%d PACS fault log lines for study %s, want one per refusal (%d)", n, sa, refusals)
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
}

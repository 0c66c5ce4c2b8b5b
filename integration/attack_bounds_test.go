package integration

import (
	"net/url"
	"strconv"
	"strings"

	"github.com/smart-imaging/smart_imaging/internal/testehr"
)

// attackSizes asks, with A's own study token and search, for more than a
// request may cost: renderings past max_render_size (Orthanc spent 13 s
// and 743 MB on one 30000x30000 thumbnail), rendering parameters given
// twice (Orthanc honours the last), one frame listed many times (64 copies
// of one 18 MB frame came out of one request), an oversized Accept header,
// and search lists that each become PACS queries. All are 400 before the
// PACS is asked; sizes within the bounds are served.
func attackSizes(a *attacker, wadoA, searchA string, pa *demoPatientData, sa string) {
	var single, multi demoRow
	for _, r := range pa.rows {
		if r.study == sa && r.frames == 1 && single.sop == "" {
			single = r
		}
		if r.frames > 1 && multi.sop == "" {
			multi = r
		}
	}
	if single.sop == "" || multi.sop == "" {
		a.t.Fatalf("patient A has no single-frame instance in %s or no multi-frame instance", sa)
	}
	// The multi-frame instance's own study address.
	eps := legitSearch(a.t, a.client, searchA+"?patient="+demoPatient, "", pa.studies)
	inst := wadoA + "/studies/" + sa + "/series/" + single.series + "/instances/" + single.sop
	mf := eps[multi.study] + "/studies/" + multi.study + "/series/" + multi.series + "/instances/" + multi.sop
	octet := `multipart/related; type="application/octet-stream"`
	bad := []int{400}

	for _, q := range []string{
		"viewport=2049,2049", "viewport=8192,8192", "viewport=16,8192", "viewport=99999999999999999999,1",
		"viewport=16,16&viewport=8192,8192", "viewport=8192,8192&viewport=16,16", "quality=10&quality=100",
		"window=40,400&window=40,4", "viewport=16,16,0,0,9999999,16", "viewport=16", "viewport=16,16,16",
		"quality=1000", "window=40,0", "charset=" + strings.Repeat("x", 300),
	} {
		for _, res := range []string{"/rendered", "/thumbnail"} {
			a.run(atkReq{name: "A's instance" + res + "?" + q, url: inst + res + "?" + q, accept: "image/jpeg", want: bad})
		}
		a.run(atkReq{name: "A's study thumbnail?" + q, url: wadoA + "/studies/" + sa + "/thumbnail?" + q, accept: "image/jpeg", want: bad})
		a.run(atkReq{name: "A's frame 2 rendered?" + q, url: mf + "/frames/2/rendered?" + q, accept: "image/jpeg", want: bad})
	}
	for _, frames := range []string{"1,1", "2,1,2", "3,03", strings.TrimSuffix(strings.Repeat("3,", 64), ","),
		strings.TrimSuffix(strings.Repeat("1,2,3,4,5,6,7,8,", 8), ",")} {
		a.run(atkReq{name: "A's frames " + truncate(frames, 20), url: mf + "/frames/" + frames, accept: octet, want: bad})
	}
	a.run(atkReq{name: "A's frames 1,2 rendered at once", url: mf + "/frames/1,2/rendered", accept: "image/jpeg", want: bad})
	a.run(atkReq{name: "a 5 KB Accept header", url: inst, accept: strings.Repeat(`multipart/related; type="application/dicom"; q=0.5, `, 100), want: bad})
	// Within the bounds: served.
	for _, u := range []string{inst + "/thumbnail?viewport=2048,2048", inst + "/rendered?viewport=64,64&quality=50", mf + "/frames/3/rendered?viewport=32,32"} {
		a.run(atkReq{name: "within the bound: " + u[strings.LastIndex(u, "/"):], url: u, accept: "image/jpeg", want: []int{200}})
	}
	a.run(atkReq{name: "A's eight distinct frames", url: mf + "/frames/8,7,6,5,4,3,2,1", accept: octet, want: []int{200}})

	// Search lists: each patient.identifier value is a PACS query; study
	// identifiers travel to the PACS in one query string.
	rep := func(name, v string, n int) string {
		return strings.TrimSuffix(strings.Repeat(name+"="+url.QueryEscape(v)+"&", n), "&")
	}
	for name, q := range map[string]string{
		"patient.identifier 9 times":      "patient=" + demoPatient + "&" + rep("patient.identifier", pa.mrn, 9),
		"subject.identifier 9 times":      "patient=" + demoPatient + "&" + rep("subject.identifier", "|"+pa.mrn, 9),
		"101 study identifiers in a list": "patient=" + demoPatient + "&identifier=" + url.QueryEscape(strings.TrimSuffix(strings.Repeat("urn:oid:"+sa+",", 101), ",")),
		"101 study identifiers repeated":  "patient=" + demoPatient + "&" + rep("identifier", "urn:oid:"+sa, 101),
		"17 patient values":               rep("patient", demoPatient, 17),
		"17 patient values in a list":     "patient=" + url.QueryEscape(strings.TrimSuffix(strings.Repeat(demoPatient+",", 17), ",")),
		"_lastUpdated 9 times":            "patient=" + demoPatient + "&" + rep("_lastUpdated", "ge1900", 9),
	} {
		a.run(atkReq{name: "search: " + name, url: searchA + "?" + q, want: bad})
	}
}

// attackAudienceAndSystems tries tokens issued for another server on a
// route without base_url (an introspected aud was never compared there),
// and A's own MRN value under systems A's identifier does not have
// (patient.identifier ignored the system).
func attackAudienceAndSystems(a *attacker, ehr *testehr.EHR, pa *demoPatientData) {
	searchOn := func(route string) string { return base + route + "/fhir/ImagingStudy?patient=" + demoPatient }
	tokenFor := func(aud ...string) string {
		return ehr.IssueToken(testehr.TokenSpec{Patient: demoPatient, Aud: aud})
	}

	// The route's genuine addresses, with a token for it.
	eps := legitSearch(a.t, a.client, searchOn("/smartnb"), tokenFor(base+"/smartnb/fhir"), pa.studies)
	study := pa.studies[0]
	wado := eps[study] + "/studies/" + study + "/metadata"
	for name, aud := range map[string]string{
		"another server":            "https://elsewhere.example.org/fhir",
		"the /smart route":          base + "/smart/fhir",
		"the /jwt route":            base + "/jwt/fhir",
		"this route without /fhir":  base + "/smartnb",
		"this route over https":     "https://localhost:9080/smartnb/fhir",
		"this route's host only":    base,
		"this route's base + more":  base + "/smartnb/fhir/x",
		"the EHR itself":            ehr.FHIRBase(),
		"this route, other port":    "http://localhost:9443/smartnb/fhir",
		"this route, other host":    "http://127.0.0.1:9080/smartnb/fhir",
		"this route, case variant":  "http://localhost:9080/SMARTNB/fhir",
		"this route with a dot seg": base + "/x/../smartnb/fhir",
	} {
		tok := tokenFor(aud)
		a.run(atkReq{name: "/smartnb: search with A's token for " + name, url: searchOn("/smartnb"), bearer: tok, want: []int{401}})
		a.run(atkReq{name: "/smartnb: WADO with A's token for " + name, url: wado, bearer: tok, accept: "application/dicom+json", want: []int{401}})
	}
	// One token, two routes: accepted (and cached) where its aud points,
	// refused on the other, then still accepted where it belongs.
	smartTok := tokenFor(base + "/smart/fhir")
	a.run(atkReq{name: "/smart: A's token for /smart", url: searchOn("/smart"), bearer: smartTok, want: []int{200}, aOnly: true})
	a.run(atkReq{name: "/smartnb: the same token", url: searchOn("/smartnb"), bearer: smartTok, want: []int{401}})
	a.run(atkReq{name: "/smartnb: the same token on WADO", url: wado, bearer: smartTok, accept: "application/dicom+json", want: []int{401}})
	a.run(atkReq{name: "/smart: the same token again", url: searchOn("/smart"), bearer: smartTok, want: []int{200}, aOnly: true})
	// Controls: this route's own audience, or none.
	for name, tok := range map[string]string{"this route": tokenFor(base + "/smartnb/fhir/"), "no aud": tokenFor()} {
		a.run(atkReq{name: "/smartnb: A's token for " + name, url: searchOn("/smartnb"), bearer: tok, want: []int{200}, aOnly: true})
		// Study addresses are bound to the token that searched: this
		// token's own.
		own := legitSearch(a.t, a.client, searchOn("/smartnb"), tok, pa.studies)
		a.run(atkReq{name: "/smartnb: WADO with A's token for " + name, url: own[study] + "/studies/" + study + "/metadata", bearer: tok, accept: "application/dicom+json", want: []int{200}})
		a.run(atkReq{name: "/smartnb: WADO with A's token for " + name + " on another token's address", url: wado, bearer: tok, accept: "application/dicom+json", want: []int{403}})
	}

	// A's MRN value under systems A's MRN identifier does not have. /a's
	// mock MRN has no system; /smart's has atkMRNSystem.
	tokA := tokenFor()
	mrn := pa.mrn
	for _, c := range []struct {
		route, bearer, value string
		want                 int
	}{
		{"/a", "", "urn:other|" + mrn, 403},
		{"/a", "", atkMRNSystem + "|" + mrn, 403},
		{"/a", "", "http://hl7.org/fhir/sid/us-ssn|" + mrn, 403},
		{"/a", "", "|" + mrn, 200},
		{"/a", "", mrn, 200},
		{"/smart", tokA, "urn:other|" + mrn, 403},
		{"/smart", tokA, "|" + mrn, 403},
		{"/smart", tokA, atkMRNSystem + "/|" + mrn, 403},
		{"/smart", tokA, strings.ToUpper(atkMRNSystem) + "|" + mrn, 403},
		{"/smart", tokA, "http://hl7.org/fhir/sid/us-ssn|" + mrn, 403},
		{"/smart", tokA, atkMRNSystem + "|" + mrn, 200},
		{"/smart", tokA, mrn, 200},
	} {
		for _, name := range []string{"patient.identifier", "subject.identifier"} {
			q := url.Values{"patient": {demoPatient}, name: {c.value}}
			a.run(atkReq{name: c.route + ": " + name + "=" + strconv.Quote(c.value), url: base + c.route + "/fhir/ImagingStudy?" + q.Encode(),
				bearer: c.bearer, want: []int{c.want}, aOnly: true})
		}
	}
}

package integration

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"
	"github.com/suyashkumar/dicom"
	"github.com/suyashkumar/dicom/pkg/tag"
)

// srchPage is one searchset Bundle, checked for the shape every search
// answer must have.
type srchPage struct {
	bundle  map[string]any
	total   int
	matches []string // study UIDs of the match entries, in order
	next    string   // the next link, "" when there is none
	body    string
}

// srchGet runs a search and checks the Bundle: searchset, total present,
// a self link, fullUrl and search.mode on every entry, match entries are
// ImagingStudy and include entries Endpoint, and each study's Endpoint is
// on the same page.
func srchGet(t *testing.T, tc *caddytest.Tester, rawURL string, header ...string) srchPage {
	t.Helper()
	body := srchDo(t, tc, rawURL, http.StatusOK, header...)
	var b map[string]any
	if err := json.Unmarshal([]byte(body), &b); err != nil {
		t.Fatalf("GET %s: not JSON: %v", rawURL, err)
	}
	p := srchPage{bundle: b, body: body}
	if b["resourceType"] != "Bundle" || b["type"] != "searchset" {
		t.Fatalf("GET %s: not a searchset Bundle: %.300s", rawURL, body)
	}
	total, ok := b["total"].(float64)
	if !ok {
		t.Fatalf("GET %s: Bundle has no total: %.300s", rawURL, body)
	}
	p.total = int(total)
	links, _ := b["link"].([]any)
	self := false
	for _, l := range links {
		lm := l.(map[string]any)
		u, _ := lm["url"].(string)
		if !strings.HasPrefix(u, base+"/") {
			t.Errorf("GET %s: link %v is not an absolute URL of this server", rawURL, lm)
		}
		switch lm["relation"] {
		case "self":
			self = true
		case "next":
			p.next = u
		}
	}
	if !self {
		t.Errorf("GET %s: Bundle has no self link: %v", rawURL, links)
	}
	entries, _ := b["entry"].([]any)
	resources := map[string]map[string]any{}
	for i, e := range entries {
		em := e.(map[string]any)
		full, _ := em["fullUrl"].(string)
		res, _ := em["resource"].(map[string]any)
		search, _ := em["search"].(map[string]any)
		mode, _ := search["mode"].(string)
		if full == "" || res == nil {
			t.Fatalf("GET %s: entry %d lacks fullUrl or resource: %v", rawURL, i, em)
		}
		if _, dup := resources[full]; dup {
			t.Errorf("GET %s: fullUrl %s appears twice", rawURL, full)
		}
		resources[full] = res
		switch {
		case mode == "match" && res["resourceType"] == "ImagingStudy":
		case mode == "include" && res["resourceType"] == "Endpoint":
		default:
			t.Errorf("GET %s: entry %d is a %v with search.mode %q; want ImagingStudy/match or Endpoint/include", rawURL, i, res["resourceType"], mode)
		}
	}
	for _, e := range entries {
		res := e.(map[string]any)["resource"].(map[string]any)
		if res["resourceType"] != "ImagingStudy" {
			continue
		}
		ids, _ := res["identifier"].([]any)
		if len(ids) == 0 {
			t.Fatalf("GET %s: ImagingStudy without identifier", rawURL)
		}
		v, _ := ids[0].(map[string]any)["value"].(string)
		uid := strings.TrimPrefix(v, "urn:oid:")
		p.matches = append(p.matches, uid)
		eps, _ := res["endpoint"].([]any)
		if len(eps) == 0 {
			t.Fatalf("GET %s: study %s has no endpoint", rawURL, uid)
		}
		ref, _ := eps[0].(map[string]any)["reference"].(string)
		if ep := resources[ref]; ep == nil || ep["resourceType"] != "Endpoint" {
			t.Errorf("GET %s: study %s references Endpoint %s, which is not on this page", rawURL, uid, ref)
		}
	}
	if len(p.matches) > p.total {
		t.Errorf("GET %s: %d matches on the page but total %d", rawURL, len(p.matches), p.total)
	}
	return p
}

// srchDo sends a GET with optional header name/value pairs, checks the
// status and returns the body.
func srchDo(t *testing.T, tc *caddytest.Tester, rawURL string, wantStatus int, header ...string) string {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, rawURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "application/fhir+json")
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := tc.Client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", rawURL, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != wantStatus {
		t.Fatalf("GET %s: status %d, want %d; body %.400s", rawURL, resp.StatusCode, wantStatus, body)
	}
	return string(body)
}

// srchOutcome checks that body is an OperationOutcome whose diagnostics
// mention every word in want.
func srchOutcome(t *testing.T, body string, want ...string) {
	t.Helper()
	var oo map[string]any
	if err := json.Unmarshal([]byte(body), &oo); err != nil || oo["resourceType"] != "OperationOutcome" {
		t.Fatalf("body is not an OperationOutcome: %.300s", body)
	}
	for _, w := range want {
		if !strings.Contains(body, w) {
			t.Errorf("OperationOutcome does not mention %q: %.300s", w, body)
		}
	}
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

func TestSearchIdentifier(t *testing.T) {
	tc := caddytest.NewTester(t)
	tc.InitServer(demoConfig(), "caddyfile")
	c := readCorpus(t)
	open := base + "/open/fhir/ImagingStudy"
	patient := base + "/hardcoded-patient/fhir/ImagingStudy?patient=" + demoPatient

	for _, uid := range keys(c.byStudy) {
		for _, ident := range []string{"urn:oid:" + uid, "urn:dicom:uid|urn:oid:" + uid} {
			t.Run(ident, func(t *testing.T) {
				p := srchGet(t, tc, open+"?identifier="+url.QueryEscape(ident))
				if p.total != 1 || !slices.Equal(p.matches, []string{uid}) {
					t.Errorf("total %d, studies %v; want exactly %s", p.total, p.matches, uid)
				}
			})
		}
	}

	t.Run("another system matches nothing", func(t *testing.T) {
		uid := keys(c.byStudy)[0]
		p := srchGet(t, tc, open+"?identifier="+url.QueryEscape("http://hospital.example.org/accession|urn:oid:"+uid))
		if p.total != 0 || len(p.matches) != 0 {
			t.Errorf("total %d, studies %v; want none", p.total, p.matches)
		}
	})

	t.Run("malformed UID is 400", func(t *testing.T) {
		body := srchDo(t, tc, open+"?identifier=urn:oid:1.2.abc", http.StatusBadRequest)
		srchOutcome(t, body, "identifier")
	})

	own := keys(c.byPatient[demoMRN])
	t.Run("own study on the patient route", func(t *testing.T) {
		p := srchGet(t, tc, patient+"&identifier=urn:oid:"+own[0])
		if p.total != 1 || !slices.Equal(p.matches, own[:1]) {
			t.Errorf("total %d, studies %v; want exactly %s", p.total, p.matches, own[0])
		}
	})

	// Within the authorized patient, a study that is not theirs is silently
	// left out: an empty Bundle, not the study and not an error.
	for mrn, studies := range c.byPatient {
		if mrn == demoMRN {
			continue
		}
		other := keys(studies)[0]
		t.Run("study of "+mrn+" on the patient route", func(t *testing.T) {
			p := srchGet(t, tc, patient+"&identifier=urn:oid:"+other)
			if p.total != 0 || len(p.matches) != 0 {
				t.Errorf("total %d, studies %v; want an empty Bundle", p.total, p.matches)
			}
			if strings.Contains(p.body, "/wado/") {
				t.Errorf("the empty Bundle holds a WADO address: %.300s", p.body)
			}
			// Asking for one's own and the other's study gives one's own only.
			p = srchGet(t, tc, patient+"&identifier="+url.QueryEscape("urn:oid:"+other+",urn:oid:"+own[0]))
			if !slices.Equal(p.matches, own[:1]) {
				t.Errorf("own OR other: studies %v, want %s only", p.matches, own[0])
			}
		})
	}
}

func TestSearchPaging(t *testing.T) {
	tc := caddytest.NewTester(t)
	tc.InitServer(demoConfig(), "caddyfile")
	c := readCorpus(t)

	for name, start := range map[string]struct {
		url  string
		want []string
	}{
		"open":              {base + "/open/fhir/ImagingStudy?_count=1", keys(c.byStudy)},
		"patient":           {base + "/hardcoded-patient/fhir/ImagingStudy?_count=1&patient=" + demoPatient, keys(c.byPatient[demoMRN])},
		"open _include":     {base + "/open/fhir/ImagingStudy?_count=2&_include=ImagingStudy:endpoint", keys(c.byStudy)},
		"open, other order": {base + "/open/fhir/ImagingStudy?_count=4&_offset=0", keys(c.byStudy)},
	} {
		t.Run(name, func(t *testing.T) {
			q, _ := url.Parse(start.url)
			count := 0
			fmt.Sscan(q.Query().Get("_count"), &count)
			seen := map[string]bool{}
			next := start.url
			pages := 0
			for next != "" {
				if pages++; pages > len(start.want)+1 {
					t.Fatalf("more than %d pages for %d studies: the next links loop", pages-1, len(start.want))
				}
				p := srchGet(t, tc, next)
				if p.total != len(start.want) {
					t.Errorf("page %d: total %d, want %d (every page tells the whole count)", pages, p.total, len(start.want))
				}
				wantOnPage := min(count, len(start.want)-len(seen))
				if len(p.matches) != wantOnPage {
					t.Errorf("page %d: %d matches, want %d", pages, len(p.matches), wantOnPage)
				}
				for _, uid := range p.matches {
					if seen[uid] {
						t.Errorf("page %d repeats study %s", pages, uid)
					}
					seen[uid] = true
				}
				if p.next != "" && !strings.HasPrefix(p.next, strings.SplitN(start.url, "?", 2)[0]+"?") {
					t.Errorf("next link %s does not point at the same search", p.next)
				}
				next = p.next
			}
			if got := keys(seen); !slices.Equal(got, start.want) {
				t.Errorf("paging gave studies %v, want %v", got, start.want)
			}
		})
	}

	t.Run("next links keep the search", func(t *testing.T) {
		mrn := "SIA-MRN-0001"
		p := srchGet(t, tc, base+"/open/fhir/ImagingStudy?_count=1&patient.identifier="+mrn)
		if p.next == "" {
			t.Fatalf("no next link with %d studies and _count=1", p.total)
		}
		p2 := srchGet(t, tc, p.next)
		want := keys(c.byPatient[mrn])
		if got := sorted(append(p.matches, p2.matches...)); !slices.Equal(got, want) {
			t.Errorf("two pages: %v, want the MRN's %v", got, want)
		}
		if p2.next != "" {
			t.Errorf("last page has a next link %s", p2.next)
		}
	})

	for _, q := range []string{"_summary=count", "_count=0", "_summary=count&_count=1"} {
		t.Run(q, func(t *testing.T) {
			p := srchGet(t, tc, base+"/open/fhir/ImagingStudy?"+q)
			if p.total != len(c.byStudy) {
				t.Errorf("total %d, want %d", p.total, len(c.byStudy))
			}
			if _, has := p.bundle["entry"]; has {
				t.Errorf("summary Bundle has entries: %.300s", p.body)
			}
			p = srchGet(t, tc, base+"/hardcoded-patient/fhir/ImagingStudy?patient="+demoPatient+"&"+q)
			if p.total != len(c.byPatient[demoMRN]) || len(p.matches) != 0 {
				t.Errorf("patient route: total %d, %d entries; want %d, none", p.total, len(p.matches), len(c.byPatient[demoMRN]))
			}
		})
	}

	for _, bad := range []string{"_count=-1", "_count=many", "_offset=-3"} {
		t.Run(bad+" is 400", func(t *testing.T) {
			name, _, _ := strings.Cut(bad, "=")
			srchOutcome(t, srchDo(t, tc, base+"/open/fhir/ImagingStudy?"+bad, http.StatusBadRequest), name)
		})
	}
}

// srchStudyTimes reads, from the DICOM files themselves, the instant each
// demo study happened: StudyDate and StudyTime in TimezoneOffsetFromUTC,
// or UTC when the study has none.
func srchStudyTimes(t *testing.T, c corpus) (times map[string]time.Time, withOffset string) {
	t.Helper()
	times = map[string]time.Time{}
	for uid, insts := range c.byStudy {
		ds, err := dicom.ParseFile(insts[0].file, nil, dicom.SkipPixelData())
		if err != nil {
			t.Fatal(err)
		}
		get := func(tg tag.Tag) string {
			e, err := ds.FindElementByTag(tg)
			if err != nil {
				return ""
			}
			v, _ := e.Value.GetValue().([]string)
			if len(v) == 0 {
				return ""
			}
			return strings.TrimSpace(v[0])
		}
		da, tm, off := get(tag.StudyDate), get(tag.StudyTime), get(tag.TimezoneOffsetFromUTC)
		whole, frac, _ := strings.Cut(tm, ".")
		loc := time.UTC
		if off != "" {
			z, err := time.Parse("-0700", off)
			if err != nil {
				t.Fatalf("study %s: TimezoneOffsetFromUTC %q: %v", uid, off, err)
			}
			loc = z.Location()
			withOffset = uid
		}
		at, err := time.ParseInLocation("20060102150405", da+whole, loc)
		if err != nil {
			t.Fatalf("study %s: StudyDate %q StudyTime %q: %v", uid, da, tm, err)
		}
		if frac != "" {
			d, err := time.ParseDuration("0." + frac + "s")
			if err != nil {
				t.Fatal(err)
			}
			at = at.Add(d)
		}
		times[uid] = at
	}
	if withOffset == "" {
		t.Fatal("no demo study has TimezoneOffsetFromUTC")
	}
	return times, withOffset
}

// _lastUpdated: DICOMweb has no last-updated time, so the server compares
// with the study's StudyDate and StudyTime, in the study's
// TimezoneOffsetFromUTC when it has one and in UTC otherwise. A FHIR value
// without a zone is UTC too. The expected sets below come from the files,
// read here with the DICOM library.
func TestSearchLastUpdated(t *testing.T) {
	tc := caddytest.NewTester(t)
	tc.InitServer(demoConfig(), "caddyfile")
	c := readCorpus(t)
	times, zoned := srchStudyTimes(t, c)

	expect := func(keep func(time.Time) bool) []string {
		var out []string
		for uid, at := range times {
			if keep(at) {
				out = append(out, uid)
			}
		}
		return sorted(out)
	}
	run := func(t *testing.T, route, filter string, want []string) {
		t.Helper()
		p := srchGet(t, tc, base+route+"&_lastUpdated="+url.QueryEscape(filter))
		if got := sorted(p.matches); !slices.Equal(got, want) || p.total != len(want) {
			t.Errorf("_lastUpdated=%s: total %d, studies %v; want %v", filter, p.total, got, want)
		}
	}

	// gt{day}: after the whole day (UTC), for every day a demo study has.
	days := map[string]time.Time{}
	for _, at := range times {
		d := at.UTC().Truncate(24 * time.Hour)
		days[d.Format("2006-01-02")] = d
	}
	for day, d := range days {
		next := d.AddDate(0, 0, 1)
		t.Run("gt"+day, func(t *testing.T) {
			run(t, "/open/fhir/ImagingStudy?_count=100", "gt"+day, expect(func(at time.Time) bool { return !at.Before(next) }))
		})
		t.Run("lt"+day, func(t *testing.T) {
			run(t, "/open/fhir/ImagingStudy?_count=100", "lt"+day, expect(func(at time.Time) bool { return at.Before(d) }))
		})
		t.Run("eq"+day, func(t *testing.T) {
			run(t, "/open/fhir/ImagingStudy?_count=100", day, expect(func(at time.Time) bool { return !at.Before(d) && at.Before(next) }))
		})
	}

	// The study's own offset counts: its wall clock read as UTC is later
	// than the study really happened (+hhmm), so lt{wall clock as UTC}
	// finds it only when the offset is applied.
	at := times[zoned]
	wall := time.Date(at.Year(), at.Month(), at.Day(), at.Hour(), at.Minute(), at.Second(), 0, time.UTC)
	if _, off := at.Zone(); off <= 0 {
		t.Fatalf("the zoned demo study's offset is %d s; this test wants a positive one", off)
	}
	t.Run("offset of the study", func(t *testing.T) {
		run(t, "/open/fhir/ImagingStudy?identifier=urn:oid:"+zoned, "lt"+wall.Format(time.RFC3339), []string{zoned})
		run(t, "/open/fhir/ImagingStudy?identifier=urn:oid:"+zoned, "ge"+at.UTC().Format("2006-01-02T15:04Z"), []string{zoned})
		run(t, "/open/fhir/ImagingStudy?identifier=urn:oid:"+zoned, "gt"+at.Format("2006-01-02T15:04:05-07:00"), nil)
		run(t, "/open/fhir/ImagingStudy?identifier=urn:oid:"+zoned, "eq"+at.Format("2006-01-02T15:04:05-07:00"), []string{zoned})
	})

	t.Run("patient route", func(t *testing.T) {
		own := c.byPatient[demoMRN]
		newest := time.Time{}
		for uid := range own {
			if times[uid].After(newest) {
				newest = times[uid]
			}
		}
		cut := newest.Add(-time.Second).UTC().Format(time.RFC3339)
		want := expect(func(t time.Time) bool { return !t.Before(newest) })
		want = slices.DeleteFunc(want, func(uid string) bool { return !own[uid] })
		run(t, "/hardcoded-patient/fhir/ImagingStudy?patient="+demoPatient, "gt"+cut, want)
		run(t, "/hardcoded-patient/fhir/ImagingStudy?patient="+demoPatient, "gt2999-01-01", nil)
	})

	for _, bad := range []string{"ap2023-01-01", "yesterday", "2023-13-01"} {
		t.Run(bad+" is 400", func(t *testing.T) {
			srchOutcome(t, srchDo(t, tc, base+"/open/fhir/ImagingStudy?_lastUpdated="+bad, http.StatusBadRequest), "_lastUpdated")
		})
	}
}

func TestSearchPatientIdentifier(t *testing.T) {
	tc := caddytest.NewTester(t)
	tc.InitServer(demoConfig(), "caddyfile")
	c := readCorpus(t)
	open := base + "/open/fhir/ImagingStudy?patient.identifier="

	// The demo holds decoys: SIA-MRN-00011 (a prefix match) and
	// sia-mrn-0001 (a case-insensitive match) must not come back for
	// SIA-MRN-0001.
	for _, mrn := range []string{"SIA-MRN-0001", "SIA-MRN-00011", "sia-mrn-0001", demoMRN} {
		want := keys(c.byPatient[mrn])
		if len(want) == 0 {
			t.Fatalf("the demo has no study for %s", mrn)
		}
		for _, v := range []string{mrn, "http://hospital.example.org/mrn|" + mrn, "|" + mrn} {
			t.Run("open "+v, func(t *testing.T) {
				p := srchGet(t, tc, open+url.QueryEscape(v))
				if got := sorted(p.matches); !slices.Equal(got, want) || p.total != len(want) {
					t.Errorf("total %d, studies %v; want exactly %s's %v", p.total, got, mrn, want)
				}
			})
		}
	}

	t.Run("an MRN no study has", func(t *testing.T) {
		p := srchGet(t, tc, open+"SIA-MRN-9999")
		if p.total != 0 {
			t.Errorf("total %d, want 0", p.total)
		}
	})

	for name, v := range map[string]string{
		"wildcard *":          "SIA-MRN-*",
		"wildcard ?":          "SIA-MRN-000?",
		"comma list":          "SIA-MRN-0001,SIA-MRN-00011",
		"escaped comma":       `SIA-MRN-0001\,SIA-MRN-00011`,
		"backslash":           `SIA-MRN-0001\`,
		"empty":               "",
		"empty with a system": "http://hospital.example.org/mrn|",
	} {
		t.Run(name+" is 400", func(t *testing.T) {
			body := srchDo(t, tc, open+url.QueryEscape(v), http.StatusBadRequest)
			srchOutcome(t, body, "identifier")
			if strings.Contains(body, "/wado/") {
				t.Errorf("refusal holds a WADO address")
			}
		})
	}

	// The mock patient's MRN is configured without a system: FHIR token
	// rules match it as "MRN" (any system) and "|MRN" (no system), never
	// as "system|MRN".
	patient := base + "/hardcoded-patient/fhir/ImagingStudy?"
	for _, v := range []string{demoMRN, "|" + demoMRN} {
		t.Run("patient route: own MRN as "+v, func(t *testing.T) {
			p := srchGet(t, tc, patient+"patient.identifier="+url.QueryEscape(v))
			if got, want := sorted(p.matches), keys(c.byPatient[demoMRN]); !slices.Equal(got, want) {
				t.Errorf("studies %v, want %v", got, want)
			}
		})
	}
	for _, q := range []string{
		"patient.identifier=SIA-MRN-0001",
		"patient=" + demoPatient + "&patient.identifier=SIA-MRN-0001",
		"patient.identifier=" + url.QueryEscape("http://hospital.example.org/mrn|SIA-MRN-00011"),
		"subject.identifier=sia-mrn-0001",
		// The patient's own MRN value under a system it does not have.
		"patient.identifier=" + url.QueryEscape("urn:other|"+demoMRN),
		"patient=" + demoPatient + "&patient.identifier=" + url.QueryEscape("http://hospital.example.org/mrn|"+demoMRN),
		"patient=" + demoPatient + "&subject.identifier=" + url.QueryEscape("urn:other|"+demoMRN),
	} {
		t.Run("patient route: "+q+" is 403", func(t *testing.T) {
			body := srchDo(t, tc, patient+q, http.StatusForbidden)
			srchOutcome(t, body)
			if strings.Contains(body, "/wado/") || strings.Contains(body, "2.25.") {
				t.Errorf("refusal leaks a study: %.300s", body)
			}
		})
	}
}

func TestSearchUnknownParameters(t *testing.T) {
	tc := caddytest.NewTester(t)
	tc.InitServer(demoConfig(), "caddyfile")
	c := readCorpus(t)
	strict := []string{"Prefer", "handling=strict"}

	for _, q := range []string{"foo=bar", "_sort=-started", "modality=CT", "_include=ImagingStudy:subject", "_summary=true"} {
		t.Run(q, func(t *testing.T) {
			// Lenient (the default): ignored, the search runs as without it.
			p := srchGet(t, tc, base+"/hardcoded-patient/fhir/ImagingStudy?patient="+demoPatient+"&"+q)
			if got, want := sorted(p.matches), keys(c.byPatient[demoMRN]); !slices.Equal(got, want) {
				t.Errorf("lenient: studies %v, want %v", got, want)
			}
			name, _, _ := strings.Cut(q, "=")
			body := srchDo(t, tc, base+"/hardcoded-patient/fhir/ImagingStudy?patient="+demoPatient+"&"+q, http.StatusBadRequest, strict...)
			srchOutcome(t, body, name)
			body = srchDo(t, tc, base+"/open/fhir/ImagingStudy?"+q, http.StatusBadRequest, "Prefer", "return=minimal, handling=strict")
			srchOutcome(t, body, name)
		})
	}

	t.Run("strict accepts what is supported", func(t *testing.T) {
		p := srchGet(t, tc, base+"/hardcoded-patient/fhir/ImagingStudy?patient="+demoPatient+
			"&_include=ImagingStudy:endpoint&_lastUpdated=gt2000-01-01&_count=10&_format=json", strict...)
		if got, want := sorted(p.matches), keys(c.byPatient[demoMRN]); !slices.Equal(got, want) {
			t.Errorf("studies %v, want %v", got, want)
		}
	})
	t.Run("handling=lenient", func(t *testing.T) {
		srchGet(t, tc, base+"/open/fhir/ImagingStudy?foo=bar", "Prefer", "handling=lenient")
	})
	t.Run("_format=xml is 400", func(t *testing.T) {
		srchOutcome(t, srchDo(t, tc, base+"/open/fhir/ImagingStudy?_format=xml", http.StatusBadRequest), "_format")
	})
}

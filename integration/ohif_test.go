package integration

// OHIF (examples/ohif) in a real headless Chromium against the
// patient-scoped DICOMweb root, with a SMART access token: the study list
// shows exactly the patient's studies, a study opens with pixels on the
// screen, and another patient's study UID shows nothing of theirs. OHIF's
// built bundle is fetched with npm (examples/ohif/fetch.sh) on first run;
// the test is skipped without npm or Chromium unless SIA_REQUIRE_BROWSER=1.

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"image"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddytest"

	"github.com/smart-imaging/smart_imaging/imagesource/dicomjson"
	"github.com/smart-imaging/smart_imaging/internal/testehr"
)

// ohifDist fetches OHIF's bundle (examples/ohif/fetch.sh) and returns its
// directory.
func ohifDist(t *testing.T) string {
	t.Helper()
	dir, _ := filepath.Abs("../examples/ohif")
	if _, err := exec.LookPath("npm"); err != nil {
		if os.Getenv("SIA_REQUIRE_BROWSER") == "1" {
			t.Fatal("SIA_REQUIRE_BROWSER=1 but npm is missing (OHIF is fetched with npm)")
		}
		t.Skip("OHIF test skipped: npm is missing")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, filepath.Join(dir, "fetch.sh")).CombinedOutput()
	if err != nil {
		t.Fatalf("fetching OHIF: %v\n%s", err, out)
	}
	return dir
}

// ohifConfig serves OHIF at the site root and the SMART route /ehr with
// the DICOMweb root, as examples/ohif/Caddyfile does (with smart-on-fhir
// instead of mock).
func ohifConfig(env *smartEnv, ohif string) string {
	studies, _ := filepath.Abs("../examples/demo/studies")
	return fmt.Sprintf(testGlobals+`	grace_period 2s
}
http://localhost:9080 {
	handle_path /ehr/* {
		smart_imaging {
			authz smart-on-fhir {
				fhir_base_url %[1]s
				client_id %[2]s
				private_key %[3]s
				mrn_system %[4]s
			}
			images folder %[5]s {
				lookup studies-by-mrn
			}
			dicomweb_root
		}
	}
	handle /app-config.js {
		root * %[6]s
		file_server
	}
	handle {
		root * %[6]s/dist
		try_files {path} /index.html
		file_server
	}
}
`, env.ehr.FHIRBase(), smartClientID, env.keyFile, smartMRNSystem, studies, ohif)
}

func TestOHIFInBrowser(t *testing.T) {
	if testing.Short() {
		t.Skip("OHIF browser test skipped in -short mode")
	}
	chrome := findChromium(t)
	ohif := ohifDist(t)
	env := newSmartEnv(t)
	env.tc = caddytest.NewTester(t)
	env.tc.InitServer(ohifConfig(env, ohif), "caddyfile")
	if err := os.MkdirAll("artifacts", 0o755); err != nil {
		t.Fatal(err)
	}
	c := readCorpus(t)
	own := keys(c.byPatient[demoMRN])
	tok := env.mint(env.ehr, testehr.TokenSpec{Patient: demoPatient})

	// What the list must show: the patient's studies' descriptions, and
	// nothing of any other patient's.
	own0 := qido(t, env.as(tok), base+"/ehr/dicomweb/studies")
	var descriptions []string
	for _, st := range own0 {
		descriptions = append(descriptions, st.String(dicomjson.TagStudyDescription))
	}
	var foreignNames []string
	for _, r := range readDemoManifest(t) {
		if r.patientID != demoMRN {
			last, _, _ := strings.Cut(r.patientName, "^")
			foreignNames = append(foreignNames, last)
		}
	}
	var foreign string
	for study, insts := range c.byStudy {
		if insts[0].patientID != demoMRN {
			foreign = study
			break
		}
	}

	b := startBrowser(t, chrome)
	p := b.newPage(t)
	p.expectError = true // OHIF has no #error element; its own messages are checked below
	p.navigate(base + "/#access_token=" + tok)
	cond := "document.body && document.body.innerText.includes(" + jsString("Kshlerin") + ")"
	for _, d := range descriptions {
		cond += " && document.body.innerText.includes(" + jsString(d) + ")"
	}
	p.waitFor("the patient's studies in OHIF's study list", cond)
	body := p.bodyText()
	for _, n := range foreignNames {
		if strings.Contains(body, n) {
			t.Errorf("the study list shows another patient (%s)", n)
		}
	}
	if strings.Contains(p.evalString("location.href"), "access_token") {
		t.Error("the access token stays in the address bar")
	}
	p.trySave(filepath.Join("artifacts", "ohif-study-list.png"))

	// Open a study: pixels on the screen.
	p.navigate(base + "/viewer?StudyInstanceUIDs=" + own[0])
	p.waitPixels()
	p.trySave(filepath.Join("artifacts", "ohif-viewer.png"))

	// Another patient's study UID: nothing of theirs.
	p.navigate(base + "/viewer?StudyInstanceUIDs=" + foreign)
	p.waitFor("OHIF to give up on the study", `location.pathname === "/notfoundstudy" || (document.body && /not found|no stud/i.test(document.body.innerText))`)
	p.trySave(filepath.Join("artifacts", "ohif-foreign.png"))
	body = p.bodyText()
	for _, n := range foreignNames {
		if strings.Contains(body, n) {
			t.Errorf("another patient's study UID shows a patient's name (%s)", n)
		}
	}
	if n := p.canvasDetail(); n > 4 {
		t.Errorf("another patient's study UID draws an image (%d grey levels)", n)
	}
}

func jsString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

func (p *cdpPage) evalString(expr string) string {
	p.t.Helper()
	var s string
	_ = json.Unmarshal(p.eval(expr), &s)
	return s
}

func (p *cdpPage) bodyText() string {
	return p.evalString("document.body ? document.body.innerText : ''")
}

// canvasDetail is the number of distinct grey levels on screen inside the
// largest canvas (OHIF's viewport): 0 without one, 1 for a blank one.
func (p *cdpPage) canvasDetail() int {
	p.t.Helper()
	var r *struct{ X, Y, W, H float64 }
	_ = json.Unmarshal(p.eval(`(() => { let best = null, area = 0;
		for (const c of document.querySelectorAll('canvas')) { const r = c.getBoundingClientRect();
			if (r.width * r.height > area) { area = r.width * r.height; best = {x: r.x, y: r.y, w: r.width, h: r.height}; } }
		return best; })()`), &r)
	if r == nil || r.W < 16 || r.H < 16 {
		return 0
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	var shot struct{ Data string }
	if err := p.b.call(ctx, p.session, "Page.captureScreenshot", map[string]any{"format": "png",
		"clip": map[string]any{"x": r.X, "y": r.Y, "width": r.W, "height": r.H, "scale": 1}}, &shot); err != nil {
		return 0
	}
	raw, err := base64.StdEncoding.DecodeString(shot.Data)
	if err != nil {
		return 0
	}
	img, err := png.Decode(bytes.NewReader(raw))
	if err != nil {
		return 0
	}
	return greyLevels(img)
}

func greyLevels(img image.Image) int {
	seen := map[uint32]bool{}
	bnd := img.Bounds()
	for y := bnd.Min.Y; y < bnd.Max.Y; y += 2 {
		for x := bnd.Min.X; x < bnd.Max.X; x += 2 {
			r, g, b, _ := img.At(x, y).RGBA()
			seen[(r+g+b)/3>>8] = true
		}
	}
	return len(seen)
}

// waitPixels waits until OHIF's viewport shows an image: many grey levels
// in its canvas (a blank or black viewport has one or two).
func (p *cdpPage) waitPixels() {
	p.t.Helper()
	deadline := time.Now().Add(2 * waitTimeout)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		if n := p.canvasDetail(); n >= 16 {
			return
		}
		if time.Now().After(deadline) {
			p.fail("timed out waiting for pixels in OHIF's viewport (%d grey levels)", p.canvasDetail())
		}
		<-tick.C
	}
}

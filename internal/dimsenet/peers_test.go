package dimsenet

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/suyashkumar/dicom"
	"github.com/suyashkumar/dicom/pkg/tag"

	"github.com/smart-imaging/smart_imaging/internal/dcmqrscp"
	"github.com/smart-imaging/smart_imaging/internal/orthanc"
)

const (
	demoDir   = "../../examples/demo/studies"
	gatewayAE = "SMART-IMAGING"
)

// peer is a real DIMSE peer holding the demo studies.
type peer struct {
	name, addr, aet string
}

// demoStudies reads the demo corpus: study UID → SOP instance UIDs, and
// PatientID → study UIDs.
func demoStudies(t *testing.T) (map[string][]string, map[string][]string) {
	t.Helper()
	studies, patients := map[string][]string{}, map[string][]string{}
	files, err := filepath.Glob(filepath.Join(demoDir, "*", "*", "*", "*.dcm"))
	if err != nil || len(files) == 0 {
		files = nil
		filepath.WalkDir(demoDir, func(p string, d os.DirEntry, err error) error {
			if err == nil && strings.HasSuffix(p, ".dcm") {
				files = append(files, p)
			}
			return nil
		})
	}
	for _, f := range files {
		ds, err := dicom.ParseFile(f, nil, dicom.SkipPixelData())
		if err != nil {
			t.Fatal(err)
		}
		st, sop, pid := str(ds, tag.StudyInstanceUID), str(ds, tag.SOPInstanceUID), str(ds, tag.PatientID)
		if len(studies[st]) == 0 {
			patients[pid] = append(patients[pid], st)
		}
		studies[st] = append(studies[st], sop)
	}
	return studies, patients
}

func str(ds dicom.Dataset, t tag.Tag) string {
	e, err := ds.FindElementByTag(t)
	if err != nil {
		return ""
	}
	v, _ := e.Value.GetValue().([]string)
	if len(v) == 0 {
		return ""
	}
	return strings.TrimRight(v[0], " \x00")
}

// startPeers starts Orthanc and dcmqrscp with the demo studies; moveTo is
// the port of the C-STORE receiver both send C-MOVE results to.
func startPeers(t *testing.T, moveTo int) []peer {
	t.Helper()
	orthanc.SkipUnlessAvailable(t)
	ctx := context.Background()
	o, err := orthanc.Start(ctx, orthanc.Options{DICOM: &orthanc.DICOMOptions{Modalities: map[string]orthanc.Modality{
		"gateway": {AET: gatewayAE, Host: "127.0.0.1", Port: moveTo, AllowEcho: true, AllowFind: true, AllowGet: true, AllowMove: true, AllowStore: true},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { o.Stop() })
	if _, err := o.Upload(ctx, demoDir); err != nil {
		t.Fatal(err)
	}
	q := dcmqrscp.Require(t, dcmqrscp.Options{GatewayAET: gatewayAE, GatewayPort: moveTo})
	if err := q.Load(ctx, demoDir); err != nil {
		t.Fatal(err)
	}
	return []peer{{"orthanc", o.DICOMAddr(), o.DICOMAET()}, {"dcmqrscp", q.Addr(), dcmqrscp.AET}}
}

// receiver is a C-STORE receiver that keeps SOP instance UIDs it got.
type receiver struct {
	mu   sync.Mutex
	got  map[string][]byte // SOP instance → Part 10 file
	from []string
}

func (r *receiver) store(req StoreRequest) uint16 {
	var buf bytes.Buffer
	WritePart10Header(&buf, req.SOPClass, req.SOPInstance, req.TransferSyntax, req.CallingAE)
	if _, err := io.Copy(&buf, req.Data); err != nil {
		return StatusOutOfResources
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.got == nil {
		r.got = map[string][]byte{}
	}
	r.got[req.SOPInstance] = buf.Bytes()
	r.from = append(r.from, req.CallingAE)
	return StatusSuccess
}

func (r *receiver) sops() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for s := range r.got {
		out = append(out, s)
	}
	sort.Strings(out)
	return out
}

func TestPeers(t *testing.T) {
	if testing.Short() {
		t.Skip("starts Orthanc and dcmqrscp")
	}
	studies, patients := demoStudies(t)
	rcv := &receiver{}
	ln, err := Listen("127.0.0.1:0", ListenerConfig{AE: gatewayAE, Store: rcv.store})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	peers := startPeers(t, port)
	var pid string
	for p := range patients {
		if pid == "" || len(patients[p]) > len(patients[pid]) || len(patients[p]) == len(patients[pid]) && p < pid {
			pid = p
		}
	}
	for _, p := range peers {
		t.Run(p.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			cfg := Config{CallingAE: gatewayAE, CalledAE: p.aet, Timeout: 10 * time.Second}
			a, err := Dial(ctx, p.addr, cfg, QueryContexts())
			if err != nil {
				t.Fatal(err)
			}
			if err := a.Echo(ctx); err != nil {
				t.Fatal(err)
			}
			var found []string
			err = a.Find(ctx, []Key{{tag.QueryRetrieveLevel, "STUDY"}, {tag.PatientID, pid}, {tag.StudyInstanceUID, ""}, {tag.StudyDate, ""}}, func(ds dicom.Dataset) error {
				found = append(found, str(ds, tag.StudyInstanceUID))
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			sort.Strings(found)
			want := append([]string(nil), patients[pid]...)
			sort.Strings(want)
			if strings.Join(found, " ") != strings.Join(want, " ") {
				t.Errorf("C-FIND PatientID=%s: %v, want %v", pid, found, want)
			}
			study := want[0]
			if err := a.Release(); err != nil {
				t.Errorf("release: %v", err)
			}

			// C-GET.
			g, err := Dial(ctx, p.addr, cfg, GetContexts())
			if err != nil {
				t.Fatal(err)
			}
			got := &receiver{}
			res, err := g.Get(ctx, []Key{{tag.QueryRetrieveLevel, "STUDY"}, {tag.StudyInstanceUID, study}}, got.store)
			if err != nil {
				t.Fatalf("C-GET: %v (%+v)", err, res)
			}
			g.Release()
			wantSOPs := append([]string(nil), studies[study]...)
			sort.Strings(wantSOPs)
			if strings.Join(got.sops(), " ") != strings.Join(wantSOPs, " ") {
				t.Errorf("C-GET got %v, want %v", got.sops(), wantSOPs)
			}
			for sop, b := range got.got {
				ds, err := dicom.Parse(bytes.NewReader(b), int64(len(b)), nil, dicom.SkipPixelData())
				if err != nil {
					t.Errorf("C-GET instance %s does not parse: %v", sop, err)
					continue
				}
				if s := str(ds, tag.StudyInstanceUID); s != study {
					t.Errorf("C-GET instance %s of study %s", sop, s)
				}
			}

			// C-MOVE to our receiver.
			m, err := Dial(ctx, p.addr, cfg, QueryContexts())
			if err != nil {
				t.Fatal(err)
			}
			rcv.mu.Lock()
			rcv.got = nil
			rcv.mu.Unlock()
			res, err = m.Move(ctx, gatewayAE, []Key{{tag.QueryRetrieveLevel, "STUDY"}, {tag.StudyInstanceUID, study}})
			if err != nil {
				t.Fatalf("C-MOVE: %v (%+v)", err, res)
			}
			m.Release()
			if strings.Join(rcv.sops(), " ") != strings.Join(wantSOPs, " ") {
				t.Errorf("C-MOVE delivered %v, want %v", rcv.sops(), wantSOPs)
			}
			if res.Completed != len(wantSOPs) {
				t.Errorf("C-MOVE reports %d completed, want %d", res.Completed, len(wantSOPs))
			}
		})
	}

	t.Run("unknown calling AE is rejected", func(t *testing.T) {
		for _, p := range peers {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			_, err := Dial(ctx, p.addr, Config{CallingAE: "STRANGER", CalledAE: p.aet}, QueryContexts())
			cancel()
			var rj *RejectError
			if err == nil {
				t.Errorf("%s accepted an unknown AE", p.name)
			} else if !errors.As(err, &rj) && p.name == "dcmqrscp" {
				t.Errorf("%s: %v, want an A-ASSOCIATE-RJ", p.name, err)
			} else {
				t.Logf("%s: %v", p.name, err)
			}
		}
	})
}

package dicomhead

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/suyashkumar/dicom"
	"github.com/suyashkumar/dicom/pkg/tag"
)

const demoDir = "../../examples/demo/studies"

// demoFiles lists the bundled demo instances.
func demoFiles(t testing.TB) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(demoDir, func(p string, d os.DirEntry, err error) error {
		if err == nil && strings.HasSuffix(p, ".dcm") {
			files = append(files, p)
		}
		return err
	})
	if err != nil || len(files) == 0 {
		t.Fatalf("no demo files under %s: %v", demoDir, err)
	}
	return files
}

// oracle reads PatientID and StudyInstanceUID with the DICOM library the
// folder source uses.
func oracle(t testing.TB, b []byte) (patient, study []string, ok bool) {
	t.Helper()
	defer func() {
		if recover() != nil {
			ok = false
		}
	}()
	ds, err := dicom.Parse(bytes.NewReader(b), int64(len(b)), nil, dicom.SkipPixelData(),
		dicom.AllowUnknownSpecificCharacterSet(), dicom.AllowMissingMetaElementGroupLength())
	if err != nil {
		return nil, nil, false
	}
	get := func(tg tag.Tag) []string {
		e, err := ds.FindElementByTag(tg)
		if err != nil {
			return nil
		}
		vs, _ := e.Value.GetValue().([]string)
		var out []string
		for _, v := range vs {
			if v = strings.TrimRight(v, " \x00"); v != "" {
				out = append(out, v)
			}
		}
		return out
	}
	return get(tag.PatientID), get(tag.StudyInstanceUID), true
}

func TestParseAgreesWithTheDICOMLibraryOnTheDemoFiles(t *testing.T) {
	for _, name := range demoFiles(t) {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		id, err := Parse(b)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		pid, study, ok := oracle(t, b)
		if !ok {
			t.Fatalf("%s: the DICOM library cannot read it", name)
		}
		if !slices.Equal(id.PatientIDs, pid) || !slices.Equal(id.StudyUIDs, study) {
			t.Errorf("%s: got PatientID %q study %q, the library reads %q %q", name, id.PatientIDs, id.StudyUIDs, pid, study)
		}
		if id.HeaderLength > 4096 || id.HeaderLength < 132 {
			t.Errorf("%s: header length %d", name, id.HeaderLength)
		}
	}
}

// elem encodes one element (explicit VR unless implicit).
func elem(implicit bool, group, element uint16, vr string, value []byte) []byte {
	var b bytes.Buffer
	binary.Write(&b, binary.LittleEndian, group)
	binary.Write(&b, binary.LittleEndian, element)
	long := false
	switch vr {
	case "OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT", "SV", "UV":
		long = true
	}
	switch {
	case implicit:
		binary.Write(&b, binary.LittleEndian, uint32(len(value)))
	case long:
		b.WriteString(vr)
		b.Write([]byte{0, 0})
		binary.Write(&b, binary.LittleEndian, uint32(len(value)))
	default:
		b.WriteString(vr)
		binary.Write(&b, binary.LittleEndian, uint16(len(value)))
	}
	b.Write(value)
	return b.Bytes()
}

// undefinedSeq encodes an element of undefined length holding items.
func undefinedSeq(implicit bool, group, element uint16, vr string, items ...[]byte) []byte {
	var b bytes.Buffer
	binary.Write(&b, binary.LittleEndian, group)
	binary.Write(&b, binary.LittleEndian, element)
	if !implicit {
		b.WriteString(vr)
		b.Write([]byte{0, 0})
	}
	binary.Write(&b, binary.LittleEndian, uint32(undefinedLength))
	for _, it := range items {
		b.Write(it)
	}
	b.Write([]byte{0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0})
	return b.Bytes()
}

// item encodes an item, of undefined length when undefined is set.
func item(undefined bool, elems ...[]byte) []byte {
	var b bytes.Buffer
	b.Write([]byte{0xFE, 0xFF, 0x00, 0xE0})
	body := bytes.Join(elems, nil)
	if undefined {
		binary.Write(&b, binary.LittleEndian, uint32(undefinedLength))
		b.Write(body)
		b.Write([]byte{0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0})
	} else {
		binary.Write(&b, binary.LittleEndian, uint32(len(body)))
		b.Write(body)
	}
	return b.Bytes()
}

func pad(s string, with byte) []byte {
	if len(s)%2 == 1 {
		s += string(with)
	}
	return []byte(s)
}

// part10 builds a Part 10 object with the given transfer syntax and data
// set elements.
func part10(ts string, dataset ...[]byte) []byte {
	var b bytes.Buffer
	b.Write(make([]byte, 128))
	b.WriteString("DICM")
	meta := bytes.Join([][]byte{
		elem(false, 0x0002, 0x0001, "OB", []byte{0, 1}),
		elem(false, 0x0002, 0x0002, "UI", pad("1.2.840.10008.5.1.4.1.1.7", 0)),
		elem(false, 0x0002, 0x0010, "UI", pad(ts, 0)),
	}, nil)
	gl := make([]byte, 4)
	binary.LittleEndian.PutUint32(gl, uint32(len(meta)))
	b.Write(elem(false, 0x0002, 0x0000, "UL", gl))
	b.Write(meta)
	for _, e := range dataset {
		b.Write(e)
	}
	return b.Bytes()
}

const (
	explicitLE = "1.2.840.10008.1.2.1"
	jpegLS     = "1.2.840.10008.1.2.4.80"
	studyUID   = "2.25.123456789.1"
	patientID  = "MRN-0042"
)

// withSequences builds an object whose PatientID and StudyInstanceUID come
// after sequences of every shape: undefined-length SQ with undefined- and
// defined-length items, a nested undefined-length sequence, and (explicit
// only) a UN of undefined length holding implicit items.
func withSequences(ts string) []byte { return withSequencesUN(ts, true) }

// withSequencesUN is withSequences, without the UN element when withUN is
// false (the DICOM library reads a UN's items as explicit VR, against
// PS3.5 §6.2.2, and fails on them).
func withSequencesUN(ts string, withUN bool) []byte {
	implicit := ts == tsImplicitLE
	nested := undefinedSeq(implicit, 0x0040, 0xA730, "SQ",
		item(true, elem(implicit, 0x0040, 0xA010, "CS", pad("CONTAINS", ' '))))
	var un []byte
	if !implicit && withUN {
		// The UN's items are implicit VR, whatever the data set's encoding.
		un = undefinedSeq(false, 0x0009, 0x1010, "UN",
			item(true, elem(true, 0x0009, 0x0010, "", pad("PRIVATE", ' ')),
				undefinedSeq(true, 0x0009, 0x1011, "", item(true, elem(true, 0x0008, 0x0100, "", pad("X", ' '))))))
	}
	return part10(ts,
		elem(implicit, 0x0008, 0x0005, "CS", pad("ISO_IR 192", ' ')),
		elem(implicit, 0x0008, 0x0018, "UI", pad("2.25.123456789.1.1.1", 0)),
		undefinedSeq(implicit, 0x0008, 0x1032, "SQ",
			item(true, elem(implicit, 0x0008, 0x0100, "SH", pad("CTCHEST", ' ')), nested),
			item(false, elem(implicit, 0x0008, 0x0100, "SH", pad("CTABD", ' ')))),
		un,
		elem(implicit, 0x0010, 0x0010, "PN", pad("Test^Patient", ' ')),
		elem(implicit, 0x0010, 0x0020, "LO", pad(patientID, ' ')),
		elem(implicit, 0x0010, 0x0030, "DA", pad("19700101", ' ')),
		elem(implicit, 0x0020, 0x000D, "UI", pad(studyUID, 0)),
		elem(implicit, 0x0020, 0x000E, "UI", pad(studyUID+".1", 0)),
		elem(implicit, 0x7FE0, 0x0010, "OW", make([]byte, 64)),
	)
}

func TestParseSequencesInEveryEncoding(t *testing.T) {
	for _, ts := range []string{explicitLE, tsImplicitLE, jpegLS} {
		b := withSequences(ts)
		id, err := Parse(b)
		if err != nil {
			t.Fatalf("%s: %v", ts, err)
		}
		if !slices.Equal(id.PatientIDs, []string{patientID}) || !slices.Equal(id.StudyUIDs, []string{studyUID}) || id.TransferSyntax != ts {
			t.Errorf("%s: got %+v", ts, id)
		}
		if ts != jpegLS {
			// The library reads JPEG-LS objects only with encapsulated
			// pixel data, and UN items only as explicit VR.
			b := withSequencesUN(ts, false)
			if pid, study, ok := oracle(t, b); !ok || !slices.Equal(pid, id.PatientIDs) || !slices.Equal(study, id.StudyUIDs) {
				t.Errorf("%s: the DICOM library reads %q %q (ok %v)", ts, pid, study, ok)
			}
		}
	}
}

// Every prefix of an object either asks for more bytes or gives the
// object's identity: never another answer, never a refusal.
func TestParseEveryPrefix(t *testing.T) {
	demo, err := os.ReadFile(demoFiles(t)[0])
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"demo": demo, "explicit": withSequences(explicitLE), "implicit": withSequences(tsImplicitLE)} {
		want, err := Parse(b)
		if err != nil {
			t.Fatal(err)
		}
		for n := 0; n <= want.HeaderLength; n++ {
			got, err := Parse(b[:n])
			switch {
			case errors.Is(err, ErrShort):
				if n == want.HeaderLength {
					t.Errorf("%s: the whole header (%d bytes) is still too short", name, n)
				}
			case err != nil:
				t.Fatalf("%s: prefix of %d bytes: %v", name, n, err)
			case !slices.Equal(got.PatientIDs, want.PatientIDs) || !slices.Equal(got.StudyUIDs, want.StudyUIDs):
				t.Fatalf("%s: prefix of %d bytes gives %+v, the whole %+v", name, n, got, want)
			}
		}
	}
}

func TestParseMultiValuesAndMissingElements(t *testing.T) {
	b := part10(explicitLE,
		elem(false, 0x0010, 0x0020, "LO", pad(`A\B`, ' ')),
		elem(false, 0x0020, 0x000D, "UI", pad(studyUID, 0)))
	id, err := Parse(b)
	if err != nil || !slices.Equal(id.PatientIDs, []string{"A", "B"}) {
		t.Errorf("multi-valued PatientID: %+v, %v", id, err)
	}
	// No PatientID, no StudyInstanceUID: read to the first later tag.
	later := elem(false, 0x0020, 0x000E, "UI", pad(studyUID, 0))
	b = part10(explicitLE, elem(false, 0x0010, 0x0010, "PN", pad("X", ' ')), later)
	id, err = Parse(b)
	if err != nil || id.PatientIDs != nil || id.StudyUIDs != nil {
		t.Errorf("missing elements: %+v, %v", id, err)
	}
	if _, err := Parse(b[:len(b)-len(later)+3]); !errors.Is(err, ErrShort) {
		t.Errorf("before the first later tag: %v, want ErrShort", err)
	}
	// An empty PatientID is no PatientID.
	b = part10(explicitLE, elem(false, 0x0010, 0x0020, "LO", nil), elem(false, 0x0020, 0x000D, "UI", pad(studyUID, 0)))
	if id, err := Parse(b); err != nil || id.PatientIDs != nil {
		t.Errorf("empty PatientID: %+v, %v", id, err)
	}
}

func TestParseRefuses(t *testing.T) {
	good := withSequences(explicitLE)
	deep := elem(false, 0x0008, 0x0100, "SH", pad("X", ' '))
	for i := 0; i < maxDepth+1; i++ {
		deep = undefinedSeq(false, 0x0008, 0x1032, "SQ", item(true, deep))
	}
	cases := map[string][]byte{
		"no DICM":        append(make([]byte, 128), []byte("DICX....")...),
		"no DICM, short": append(make([]byte, 128), 'D', 'X'),
		"deflated":       part10(tsDeflatedLE, elem(false, 0x0010, 0x0020, "LO", pad(patientID, ' '))),
		"big endian":     part10(tsExplicitBE, elem(false, 0x0010, 0x0020, "LO", pad(patientID, ' '))),
		"no transfer syntax": append(append(make([]byte, 128), "DICM"...),
			elem(false, 0x0010, 0x0020, "LO", pad(patientID, ' '))...),
		"bad VR": part10(explicitLE, []byte{0x10, 0, 0x20, 0, 'l', 'o', 2, 0, 'A', 'B'}),
		"PatientID twice": part10(explicitLE,
			elem(false, 0x0010, 0x0020, "LO", pad(patientID, ' ')),
			elem(false, 0x0010, 0x0020, "LO", pad("OTHER", ' ')),
			elem(false, 0x0020, 0x000D, "UI", pad(studyUID, 0))),
		"tags out of order": part10(explicitLE,
			elem(false, 0x0010, 0x0020, "LO", pad(patientID, ' ')),
			elem(false, 0x0008, 0x0018, "UI", pad(studyUID, 0)),
			elem(false, 0x0020, 0x000D, "UI", pad(studyUID, 0))),
		"undefined-length PatientID": part10(explicitLE, undefinedSeq(false, 0x0010, 0x0020, "SQ")),
		"undefined-length UT":        part10(explicitLE, undefinedSeq(false, 0x0010, 0x0010, "UT")),
		"element in a sequence":      part10(explicitLE, undefinedSeq(false, 0x0008, 0x1032, "SQ", elem(false, 0x0008, 0x0100, "SH", pad("X", ' ')))),
		"nested too deep":            part10(explicitLE, deep),
	}
	for name, b := range cases {
		if _, err := Parse(b); !errors.Is(err, ErrUnreadable) {
			t.Errorf("%s: %v, want ErrUnreadable", name, err)
		}
	}
	if _, err := Parse(good); err != nil {
		t.Errorf("the well-formed object: %v", err)
	}
}

// FuzzParse: Parse never panics; an identity read from a prefix is the
// identity read from any longer input; where the DICOM library reads the
// same bytes too, both agree.
func FuzzParse(f *testing.F) {
	for _, name := range demoFiles(f)[:3] {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b[:min(len(b), 2048)])
	}
	f.Add(withSequences(explicitLE))
	f.Add(withSequences(tsImplicitLE))
	f.Add(part10(tsDeflatedLE))
	f.Fuzz(func(t *testing.T, b []byte) {
		id, err := Parse(b)
		if err != nil {
			if !errors.Is(err, ErrShort) && !errors.Is(err, ErrUnreadable) {
				t.Fatalf("unexpected error kind: %v", err)
			}
			return
		}
		if id.HeaderLength > len(b) {
			t.Fatalf("header length %d beyond the %d bytes given", id.HeaderLength, len(b))
		}
		again, err := Parse(b[:id.HeaderLength])
		if err != nil || !slices.Equal(again.PatientIDs, id.PatientIDs) || !slices.Equal(again.StudyUIDs, id.StudyUIDs) {
			t.Fatalf("the header alone gives %+v, %v; the whole input %+v", again, err, id)
		}
		if len(id.StudyUIDs) == 0 {
			return // the library reads on past where the study UID would be
		}
		if pid, study, ok := oracle(t, b[:id.HeaderLength]); ok && (!slices.Equal(pid, id.PatientIDs) || !slices.Equal(study, id.StudyUIDs)) {
			t.Fatalf("Parse reads PatientID %q study %q, the DICOM library %q %q", id.PatientIDs, id.StudyUIDs, pid, study)
		}
	})
}

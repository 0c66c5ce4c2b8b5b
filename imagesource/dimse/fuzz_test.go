package dimse

import (
	"bytes"
	"encoding/binary"
	"os"
	"testing"

	"github.com/smart-imaging/smart_imaging/internal/dimsenet"
)

// FuzzPeekIdentity feeds arbitrary data sets to the code that reads an
// arriving instance's identity (C-STORE data from the PACS): it must not
// panic, and what it reports must come from whole elements.
func FuzzPeekIdentity(f *testing.F) {
	for _, name := range []string{
		demoDir + "/p1-kshlerin/st1-ct-chest/se01/0001.dcm",
		demoDir + "/p1-kshlerin/st2-mr-brain/se03/0001.dcm",
	} {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		start := 144 + int(binary.LittleEndian.Uint32(b[140:144]))
		f.Add(b[start:], false)
		f.Add(b[start:start+300], false)
	}
	f.Add([]byte{0x08, 0x00, 0x18, 0x00, 0xf0, 0xff, 0xff, 0x7f, '1', '2'}, true)
	f.Fuzz(func(t *testing.T, b []byte, implicit bool) {
		ts := dimsenet.ExplicitVRLittleEndian
		if implicit {
			ts = dimsenet.ImplicitVRLittleEndian
		}
		id, rest, err := peekIdentity(bytes.NewReader(b), ts)
		if len(rest) > len(b) {
			t.Fatalf("read %d bytes of %d", len(rest), len(b))
		}
		if err == nil && (id.studyUID == "" || id.sopUID == "") {
			t.Fatalf("identity without UIDs accepted: %+v", id)
		}
	})
}

package dimsenet

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// A PACS that declares a 2 GiB value in a few bytes must not make the
// gateway allocate it: the walk refuses the data set before the DICOM
// library (which allocates the declared length first) sees it.
func TestHugeDeclaredLengthsAreRefusedCheaply(t *testing.T) {
	for name, b := range map[string][]byte{
		"UI element":                  {0x08, 0x00, 0x18, 0x00, 0xf0, 0xff, 0xff, 0x7f, '1', '2'},
		"PN element":                  {0x10, 0x00, 0x10, 0x00, 0xf0, 0xff, 0xff, 0x7f, '1', '2'},
		"pixel data":                  {0xe0, 0x7f, 0x10, 0x00, 0xf0, 0xff, 0xff, 0x7f, '1', '2'},
		"item in undefined-length SQ": {0x08, 0x00, 0x32, 0x10, 0xff, 0xff, 0xff, 0xff, 0xfe, 0xff, 0x00, 0xe0, 0xf0, 0xff, 0xff, 0x7f},
		"element inside an item": {0x08, 0x00, 0x32, 0x10, 0xff, 0xff, 0xff, 0xff, 0xfe, 0xff, 0x00, 0xe0, 0xff, 0xff, 0xff, 0xff,
			0x08, 0x00, 0x00, 0x01, 0xf0, 0xff, 0xff, 0x7f},
	} {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		_, err := DecodeDataSet(b, ImplicitVRLittleEndian)
		runtime.ReadMemStats(&after)
		if err == nil || !errors.Is(err, ErrProtocol) {
			t.Errorf("%s: %v, want a protocol error", name, err)
		}
		if grew := after.TotalAlloc - before.TotalAlloc; grew > 16<<20 {
			t.Errorf("%s: refusing it allocated %d MiB", name, grew>>20)
		}
	}
}

// Every real file of the demo corpus walks to its end.
func TestWalkAcceptsRealFiles(t *testing.T) {
	var files []string
	filepath.WalkDir(demoDir, func(p string, d os.DirEntry, err error) error {
		if err == nil && strings.HasSuffix(p, ".dcm") {
			files = append(files, p)
		}
		return nil
	})
	if len(files) == 0 {
		t.Fatal("no demo files")
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		start := int64(144) + int64(binary.LittleEndian.Uint32(b[140:144]))
		end, err := Walk(bytes.NewReader(b), start, int64(len(b)), false, nil)
		if err != nil || end != int64(len(b)) {
			t.Errorf("%s: walk stopped at %d of %d: %v", f, end, len(b), err)
		}
		// Cut anywhere inside, it reports a truncation, never a panic.
		for cut := start + 1; cut < int64(len(b)); cut += 97 {
			if _, err := Walk(bytes.NewReader(b[:cut]), start, cut, false, nil); err != nil && !errors.Is(err, ErrTruncated) && !errors.Is(err, ErrProtocol) {
				t.Errorf("%s cut at %d: %v", f, cut, err)
			}
		}
	}
}

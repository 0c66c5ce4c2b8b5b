package imagesource

import (
	"net/http"
	"strings"
	"testing"
)

func TestCheckAccept(t *testing.T) {
	ok := http.Header{"Accept": {`multipart/related; type="application/dicom"; transfer-syntax=*`, "application/dicom+json"}}
	if err := CheckAccept(ok); err != nil {
		t.Errorf("a real Accept: %v", err)
	}
	if err := CheckAccept(http.Header{"Accept": {strings.Repeat("a", MaxAcceptLen)}}); err != nil {
		t.Errorf("at the bound: %v", err)
	}
	// A megabyte of media ranges, on one line or on many.
	for _, h := range []http.Header{
		{"Accept": {strings.Repeat("image/png;q=0.5, ", 60000)}},
		{"Accept": strings.Split(strings.Repeat("image/png,", 3000), ",")},
	} {
		e, isErr := AsError(CheckAccept(h))
		if !isErr || e.Status != http.StatusBadRequest {
			t.Errorf("%d lines, %d bytes: %v, want a 400", len(h["Accept"]), len(strings.Join(h["Accept"], ", ")), e)
		}
	}
}

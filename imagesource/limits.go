package imagesource

import "net/http"

// MaxAcceptLen bounds the Accept header of a WADO-RS request (its lines
// joined with ", "). Real ones are a few hundred bytes; a source parses it
// into media ranges and matches each against what it can send.
const MaxAcceptLen = 4096

// CheckAccept refuses an Accept header longer than MaxAcceptLen with a 400
// *Error.
func CheckAccept(h http.Header) error {
	n := 0
	for i, v := range h.Values("Accept") {
		if i > 0 {
			n += 2
		}
		n += len(v)
	}
	if n > MaxAcceptLen {
		return Errorf(http.StatusBadRequest, "invalid", "the Accept header is longer than %d bytes", MaxAcceptLen)
	}
	return nil
}

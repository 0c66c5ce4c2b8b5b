package httpproblem

import (
	"errors"
	"fmt"
	"net/http"
	"testing"
)

func TestProblem(t *testing.T) {
	cause := errors.New("dial tcp: connection refused")
	p := &Problem{Status: http.StatusBadGateway, Code: "exception", Message: "the PACS could not be reached", Err: cause}
	if got, want := p.Error(), "the PACS could not be reached: dial tcp: connection refused"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if !errors.Is(p, cause) {
		t.Error("the cause is not in the chain")
	}
	wrapped := fmt.Errorf("search: %w", p)
	if got, ok := As(wrapped); !ok || got != p {
		t.Errorf("As(wrapped) = %v, %v; want the problem", got, ok)
	}
	if _, ok := As(cause); ok {
		t.Error("As found a problem in a plain error")
	}
	e := Errorf(http.StatusBadRequest, "invalid", "bad %s", "uid")
	if e.Status != http.StatusBadRequest || e.Code != "invalid" || e.Error() != "bad uid" {
		t.Errorf("Errorf = %+v", e)
	}
}

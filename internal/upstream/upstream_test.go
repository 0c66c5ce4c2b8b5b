package upstream

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// TestFailedOnRealConnections maps real failures: a refused connection and
// a server that does not answer in time.
func TestFailedOnRealConnections(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there any more: connection refused

	client := &http.Client{Transport: NewTransport(), CheckRedirect: NoRedirects}
	_, err = client.Get("http://" + addr + "/")
	if err == nil {
		t.Fatal("GET on a closed port succeeded")
	}
	p := Failed(err, "slow", "down")
	if p.Status != http.StatusBadGateway || p.Code != "exception" || p.Message != "down" || p.RetryAfter != 0 || !errors.Is(p, err) {
		t.Errorf("refused: %+v, want 502 exception wrapping the cause", p)
	}

	release := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer slow.Close()
	defer close(release)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, slow.URL, nil)
	_, err = client.Do(req)
	if err == nil {
		t.Fatal("GET on a server that never answers succeeded")
	}
	p = Failed(err, "slow", "down")
	if p.Status != http.StatusGatewayTimeout || p.Code != "timeout" || p.Message != "slow" || p.RetryAfter != RetryAfter {
		t.Errorf("timeout: %+v, want 504 timeout with Retry-After", p)
	}
}

func TestNoRedirects(t *testing.T) {
	srv := httptest.NewServer(http.RedirectHandler("http://elsewhere.invalid/", http.StatusFound))
	defer srv.Close()
	resp, err := (&http.Client{Transport: NewTransport(), CheckRedirect: NoRedirects}).Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusFound {
		t.Errorf("status %d, want the redirect itself", resp.StatusCode)
	}
}

func TestNewTransportKeepAlive(t *testing.T) {
	if got := NewTransport().IdleConnTimeout; got != IdleConnTimeout || got >= time.Second {
		t.Errorf("IdleConnTimeout %v, want %v (below Orthanc's 1 s)", got, IdleConnTimeout)
	}
}

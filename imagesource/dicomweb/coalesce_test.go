package dicomweb

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestCoalescerPassesEveryByteInOrder writes a body in pieces of random
// sizes (tiny, proxy-sized, larger than the buffer) and checks the client
// gets exactly that body, whatever the mix of flushes.
func TestCoalescerPassesEveryByteInOrder(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	want := make([]byte, 3*coalesceSize+12345)
	for i := range want {
		want[i] = byte(rng.IntN(256))
	}
	for _, flushEvery := range []int{0, 1, 7} {
		rec := httptest.NewRecorder()
		c := newCoalescer(rec, nil)
		rest := want
		for n := 0; len(rest) > 0; n++ {
			k := []int{1, 100, 32 << 10, coalesceSize, coalesceSize + 1, 5000}[rng.IntN(6)]
			k = min(k, len(rest))
			if w, err := c.Write(rest[:k]); err != nil || w != k {
				t.Fatalf("Write(%d) = %d, %v", k, w, err)
			}
			rest = rest[k:]
			if flushEvery > 0 && n%flushEvery == 0 {
				if err := c.FlushError(); err != nil {
					t.Fatal(err)
				}
			}
		}
		if err := c.close(); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(rec.Body.Bytes(), want) {
			t.Fatalf("flush every %d writes: client got %d bytes, want the %d written, in order", flushEvery, rec.Body.Len(), len(want))
		}
		if _, err := c.Write([]byte("late")); !errors.Is(err, errCoalescerClosed) {
			t.Fatalf("write after close: %v, want errCoalescerClosed", err)
		}
	}
}

// failingWriter is a client that went away after its first write.
type failingWriter struct {
	http.ResponseWriter
	writes int
}

func (f *failingWriter) Write(p []byte) (int, error) {
	f.writes++
	if f.writes > 1 {
		return 0, errors.New("broken pipe")
	}
	return len(p), nil
}

// TestCoalescerStopsAfterAClientError: once a write to the client fails,
// every later write and flush reports it, so the proxy stops reading the
// PACS.
func TestCoalescerStopsAfterAClientError(t *testing.T) {
	fw := &failingWriter{ResponseWriter: httptest.NewRecorder()}
	c := newCoalescer(fw, nil)
	big := make([]byte, coalesceSize)
	var err error
	for i := 0; i < 4 && err == nil; i++ {
		_, err = c.Write(big)
	}
	if err == nil {
		t.Fatal("writes kept succeeding after the client went away")
	}
	if _, err := c.Write([]byte("x")); err == nil {
		t.Error("a write after the failure succeeded")
	}
	if err := c.FlushError(); err == nil {
		t.Error("a flush after the failure succeeded")
	}
	if err := c.close(); err == nil {
		t.Error("close after the failure reported success")
	}
}

// TestRetrieveStalledPACSStillDelivers: a PACS that sends the start of a
// study and then pauses (fetching the rest from its archive) must not
// have that start held back by the gateway's write gathering: the client
// reads it while the PACS still waits. The PACS resumes only when the
// client has the first part, so a gateway that held it would hang; the
// test bounds that wait.
func TestRetrieveStalledPACSStillDelivers(t *testing.T) {
	obj1, obj2 := dicomObject("1.2", testPatient, 10), dicomObject("1.2", testPatient, 11)
	first := "--BB\r\nContent-Type: application/dicom\r\nContent-Length: " + strconv.Itoa(len(obj1)) + "\r\n\r\n" + string(obj1) + "\r\n"
	second := "--BB\r\nContent-Type: application/dicom\r\nContent-Length: " + strconv.Itoa(len(obj2)) + "\r\n\r\n" + string(obj2) + "\r\n--BB--\r\n"
	clientHasFirst := make(chan struct{})
	s, _, _ := retrieveSetup(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", `multipart/related; type="application/dicom"; boundary=BB`)
		_, _ = io.WriteString(w, first)
		w.(http.Flusher).Flush()
		select {
		case <-clientHasFirst:
		case <-r.Context().Done():
			return
		}
		_, _ = io.WriteString(w, second)
	}, nil)
	gw := gateway(t, s)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, gw.URL+"/studies/1.2", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	// The multipart check holds back the part's trailing CRLF until it
	// sees whether the delimiter follows; everything before it must come.
	sent := strings.TrimSuffix(first, "\r\n")
	got := make([]byte, len(sent))
	if _, err := io.ReadFull(resp.Body, got); err != nil {
		t.Fatalf("the first part did not reach the client while the PACS paused: %v", err)
	}
	if string(got) != sent {
		t.Fatalf("first part %q, want %q", got, sent)
	}
	close(clientHasFirst)
	rest, err := io.ReadAll(resp.Body)
	if err != nil || string(got)+string(rest) != first+second {
		t.Fatalf("rest: %q, %v; want %q", rest, err, "\r\n"+second)
	}
}

// TestRetrieveLargeBodiesPassIntact streams answers larger than the
// gathering buffer, with and without Content-Length, and compares bytes.
func TestRetrieveLargeBodiesPassIntact(t *testing.T) {
	payload := dicomObject("1.2", testPatient, 2*coalesceSize+777)
	body := "--BB\r\nContent-Type: application/dicom\r\nContent-Length: " + strconv.Itoa(len(payload)) + "\r\n\r\n" +
		string(payload) + "\r\n--BB--\r\n"
	for _, withLength := range []bool{true, false} {
		s, _, _ := retrieveSetup(t, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", `multipart/related; type="application/dicom"; boundary=BB`)
			if withLength {
				w.Header().Set("Content-Length", strconv.Itoa(len(body)))
			}
			for rest := body; len(rest) > 0; {
				k := min(len(rest), 10000)
				_, _ = io.WriteString(w, rest[:k])
				rest = rest[k:]
			}
		}, nil)
		resp, err := http.Get(gateway(t, s).URL + "/studies/1.2")
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || string(got) != body {
			t.Fatalf("Content-Length %v: got %d bytes (%v), want the PACS's %d", withLength, len(got), err, len(body))
		}
	}
}

// TestRetrieveSmallAnswersCarryTheirLength: an answer that fits the
// gathering buffer goes out with the Content-Length of what the client
// gets (after the part headers' URLs were rewritten, so not the PACS's
// length); a larger one is chunked. Either way the bytes are whole.
func TestRetrieveSmallAnswersCarryTheirLength(t *testing.T) {
	for _, size := range []int{100, 2 * coalesceSize} {
		var upstreamLen int
		s, _, _ := retrieveSetup(t, func(w http.ResponseWriter, r *http.Request) {
			payload := strings.Repeat("f", size)
			body := "--BB\r\nContent-Type: application/octet-stream\r\nContent-Location: http://" + r.Host +
				"/dicom-web/studies/1.2/series/3.4/instances/5.6/frames/1\r\nContent-Length: " + strconv.Itoa(size) +
				"\r\n\r\n" + payload + "\r\n--BB--\r\n"
			upstreamLen = len(body)
			w.Header().Set("Content-Type", `multipart/related; type="application/octet-stream"; boundary=BB`)
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
			_, _ = io.WriteString(w, body)
		}, nil)
		resp, err := http.Get(gateway(t, s).URL + "/studies/1.2/series/3.4/instances/5.6/frames/1")
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || !strings.Contains(string(got), publicBase+"/studies/1.2/series/3.4/instances/5.6/frames/1\r\n") ||
			!strings.HasSuffix(string(got), strings.Repeat("f", size)+"\r\n--BB--\r\n") {
			t.Fatalf("%d-byte frame: body of %d bytes (%v) is not the rewritten answer", size, len(got), err)
		}
		if len(got) == upstreamLen {
			t.Fatalf("%d-byte frame: the URL was not rewritten", size)
		}
		switch {
		case size < coalesceSize && resp.ContentLength != int64(len(got)):
			t.Errorf("%d-byte frame: Content-Length %d, want the %d bytes sent", size, resp.ContentLength, len(got))
		case size > coalesceSize && resp.ContentLength != -1:
			t.Errorf("%d-byte frame: Content-Length %d, want none (chunked)", size, resp.ContentLength)
		}
	}
}

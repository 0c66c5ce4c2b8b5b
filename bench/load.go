package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// op performs one logical request (possibly several HTTP calls) and returns
// the body bytes it read.
type op func(ctx context.Context, c *http.Client, buf []byte) (int64, error)

// get is an op for one GET with headers. The answer must be 200 and, when
// it is multipart, end with its close delimiter: a short body is an error.
func get(url string, header http.Header) op {
	return func(ctx context.Context, c *http.Client, buf []byte) (int64, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return 0, err
		}
		for k, vs := range header {
			req.Header[k] = vs
		}
		resp, err := c.Do(req)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		n, tail, err := drain(countedBody(ctx, resp.Body), buf)
		if err != nil {
			return n, err
		}
		if resp.StatusCode != http.StatusOK {
			return n, fmt.Errorf("HTTP %d: %.200s", resp.StatusCode, tail)
		}
		if mt, params, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); len(mt) > 10 && mt[:10] == "multipart/" {
			closeDelim := []byte("--" + params["boundary"] + "--")
			if !bytes.Contains(tail, closeDelim) {
				return n, errors.New("multipart answer without its close delimiter")
			}
		}
		return n, nil
	}
}

// drain reads body to the end with buf and returns the byte count and the
// last bytes read (up to 512).
func drain(body io.Reader, buf []byte) (int64, []byte, error) {
	var n int64
	var tail []byte
	for {
		k, err := body.Read(buf)
		if k > 0 {
			n += int64(k)
			if k >= 512 {
				tail = append(tail[:0], buf[k-512:k]...)
			} else {
				tail = append(tail, buf[:k]...)
				if len(tail) > 512 {
					tail = tail[len(tail)-512:]
				}
			}
		}
		if err == io.EOF {
			return n, tail, nil
		}
		if err != nil {
			return n, tail, err
		}
	}
}

// loadResult is what one measured case produced.
type loadResult struct {
	Requests int64 `json:"requests"`
	// Sent counts every request made, warm-up and cut-off ones included.
	Sent       int64         `json:"sent"`
	Errors     int64         `json:"errors"`
	FirstError string        `json:"first_error,omitempty"`
	Window     time.Duration `json:"-"`
	// Bytes is the body bytes of the completed requests; Streamed the body
	// bytes that arrived inside the window (cut-off requests included).
	Bytes    int64 `json:"bytes"`
	Streamed int64 `json:"streamed_bytes"`
	// Completed is requests completed per second; RPS is Streamed per
	// second divided by the mean size of a completed answer: the same in
	// steady state, but not skewed when a few large answers straddle the
	// end of a short window. MBps is Streamed per second.
	Completed float64 `json:"completed_per_s"`
	RPS       float64 `json:"rps"`
	MBps      float64 `json:"mb_per_s"`
	P50ms     float64 `json:"p50_ms"`
	P99ms     float64 `json:"p99_ms"`
	// CPU seconds per request of the gateway, Orthanc and the load
	// generator (this process, including the test EHR) over the window.
	GatewayCPUms float64 `json:"gateway_cpu_ms_per_req"`
	OrthancCPUms float64 `json:"orthanc_cpu_ms_per_req"`
	LoadCPUms    float64 `json:"loadgen_cpu_ms_per_req"`
}

// cpuPIDs are the processes whose CPU time a run reports.
type cpuPIDs struct{ gateway, orthanc, self int }

func (p cpuPIDs) sample() [3]float64 {
	return [3]float64{cpuSeconds(p.gateway), cpuSeconds(p.orthanc), cpuSeconds(p.self)}
}

// runLoad runs o with n workers: each loops for warmup+dur, one request at
// a time, on a shared keep-alive client. Requests that complete inside the
// measured window (after warmup) count; in-flight ones are cancelled at the
// end and do not. onWindow, when set, runs (in its own goroutine) as the
// measured window starts.
func runLoad(ctx context.Context, o op, n int, warmup, dur time.Duration, pids cpuPIDs, onWindow func(context.Context)) loadResult {
	tr := &http.Transport{
		MaxIdleConns:        2 * n,
		MaxIdleConnsPerHost: 2 * n,
		IdleConnTimeout:     500 * time.Millisecond, // below Orthanc's 1 s
		DisableCompression:  true,
		ForceAttemptHTTP2:   false,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}

	start := time.Now()
	measureFrom := start.Add(warmup)
	end := measureFrom.Add(dur)
	ctx, cancel := context.WithDeadline(ctx, end)
	defer cancel()

	var cpu0, cpu1 [3]float64
	var inWindow atomic.Bool
	var streamed atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTimer(time.Until(measureFrom))
		defer t.Stop()
		select {
		case <-t.C:
			cpu0 = pids.sample()
			inWindow.Store(true)
			if onWindow != nil {
				go onWindow(ctx)
			}
			<-ctx.Done()
			inWindow.Store(false)
		case <-ctx.Done():
		}
	}()

	type worker struct {
		lat        []time.Duration
		sent       int64
		bytes      int64
		errs       int64
		firstError string
	}
	workers := make([]worker, n)
	for i := range workers {
		wg.Add(1)
		go func(w *worker) {
			defer wg.Done()
			buf := make([]byte, 256<<10)
			for ctx.Err() == nil {
				t0 := time.Now()
				b, err := o(withByteCounter(ctx, func(n int) {
					if inWindow.Load() {
						streamed.Add(int64(n))
					}
				}), client, buf)
				t1 := time.Now()
				w.sent++
				if ctx.Err() != nil && t1.After(end) {
					break // cut off by the end of the window
				}
				if t1.Before(measureFrom) {
					continue
				}
				if err != nil {
					w.errs++
					if w.firstError == "" {
						w.firstError = err.Error()
					}
					continue
				}
				w.lat = append(w.lat, t1.Sub(t0))
				w.bytes += b
			}
		}(&workers[i])
	}
	wg.Wait()
	cpu1 = pids.sample()

	var res loadResult
	var lat []time.Duration
	for _, w := range workers {
		lat = append(lat, w.lat...)
		res.Bytes += w.bytes
		res.Sent += w.sent
		res.Errors += w.errs
		if res.FirstError == "" {
			res.FirstError = w.firstError
		}
	}
	res.Requests = int64(len(lat))
	res.Window = dur
	res.Streamed = streamed.Load()
	secs := dur.Seconds()
	res.Completed = float64(res.Requests) / secs
	res.MBps = float64(res.Streamed) / secs / 1e6
	if res.Requests > 0 && res.Bytes > 0 {
		res.RPS = float64(res.Streamed) / secs / (float64(res.Bytes) / float64(res.Requests))
	} else {
		res.RPS = res.Completed
	}
	if len(lat) > 0 {
		slices.Sort(lat)
		res.P50ms = ms(percentile(lat, 0.50))
		res.P99ms = ms(percentile(lat, 0.99))
		per := func(i int) float64 {
			if cpu0[i] == 0 {
				return 0
			}
			return (cpu1[i] - cpu0[i]) * 1000 / float64(res.Requests)
		}
		res.GatewayCPUms, res.OrthancCPUms, res.LoadCPUms = per(0), per(1), per(2)
	}
	return res
}

func percentile(sorted []time.Duration, q float64) time.Duration {
	i := int(q*float64(len(sorted))+0.5) - 1
	i = max(0, min(i, len(sorted)-1))
	return sorted[i]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

type byteCounterKey struct{}

// withByteCounter makes the ops run with ctx report every body read to f.
func withByteCounter(ctx context.Context, f func(int)) context.Context {
	return context.WithValue(ctx, byteCounterKey{}, f)
}

// countedBody wraps body so that reads are reported to ctx's counter.
func countedBody(ctx context.Context, body io.Reader) io.Reader {
	f, _ := ctx.Value(byteCounterKey{}).(func(int))
	if f == nil {
		return body
	}
	return reportingReader{body, f}
}

type reportingReader struct {
	r io.Reader
	f func(int)
}

func (r reportingReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	r.f(n)
	return n, err
}

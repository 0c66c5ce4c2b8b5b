// Command bench measures what the smart_imaging gateway costs in front of a
// real PACS. In one run it starts Orthanc (internal/orthanc) on loopback,
// loads a generated data set (the demo set plus a patient with several
// studies of CT-sized images and a multi-frame instance), starts the test
// EHR (internal/testehr) in this process and the gateway as a child process
// (this same binary running Caddy's `run` command with a generated
// Caddyfile: authz smart-on-fhir against the EHR, images dicomweb against
// Orthanc). Then, with one Go load generator (keep-alive clients, N workers,
// fixed duration) at 1, 16 and 64 clients, it measures each endpoint straight
// from Orthanc and through the gateway back to back:
//
//   - search: the QIDO-RS calls an ImagingStudy search needs, issued
//     directly (studies query + one series query per study, concurrently)
//     vs the FHIR ImagingStudy search through the gateway with a cached
//     token;
//   - WADO-RS study, instance, frames and study metadata retrieves.
//
// It counts upstream QIDO calls per search (at a counting proxy in front of
// Orthanc used by a second route), introspection calls per 1,000 requests
// with one token, and, unless -quick, streams a generated ≥ 1 GiB study to
// 16 clients at once (twice through the gateway, once directly) while
// sampling the gateway's VmRSS every 100 ms.
//
// Usage:
//
//	go run ./bench [-quick] [-out bench/results/latest.json] [-profile DIR]
//
// Every process it starts (Orthanc, the gateway) is stopped before it
// exits, also on Ctrl-C; both also die with it (Linux parent-death signal).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	// The gateway child process is this binary running Caddy's CLI with
	// the standard modules and ours, as cmd/caddy does.
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/smart-imaging/smart_imaging"
)

// childEnv marks the child process that runs the gateway.
const childEnv = "SIA_BENCH_GATEWAY_CADDYFILE"

type options struct {
	quick         bool
	out           string
	profileDir    string
	warmup        time.Duration
	duration      time.Duration
	rounds        int
	clients       []int
	largeGiB      float64
	largeClients  int
	largeTimeout  time.Duration
	largeRepeats  int
	burstRequests int
	cases         map[string]bool
	timeout       time.Duration
	pin           bool
}

func main() {
	if cf := os.Getenv(childEnv); cf != "" {
		// Child: be the gateway. caddycmd.Main reads os.Args.
		os.Args = []string{os.Args[0], "run", "--config", cf, "--adapter", "caddyfile"}
		caddycmd.Main()
		return
	}

	var o options
	var clients string
	flag.BoolVar(&o.quick, "quick", false, "short run (under a minute): shorter cases, one round, no large study")
	flag.StringVar(&o.out, "out", filepath.Join("bench", "results", "latest.json"), "write the results as JSON to this file (empty: do not write)")
	flag.StringVar(&o.profileDir, "profile", "", "write CPU profiles of the gateway process (its admin /debug/pprof) for every gateway and plain-Caddy case at 16 clients, and a heap profile after the large study, into this directory")
	flag.DurationVar(&o.warmup, "warmup", 0, "warm-up per case, not measured (default 300ms; 200ms with -quick)")
	flag.DurationVar(&o.duration, "duration", 0, "measured time per case (default 1.5s; 600ms with -quick)")
	flag.IntVar(&o.rounds, "rounds", 0, "rounds over all cases; the direct/gateway order alternates and the table shows the mean (default 2; 1 with -quick)")
	flag.StringVar(&clients, "clients", "1,16,64", "comma-separated client counts")
	flag.Float64Var(&o.largeGiB, "large-gib", 1, "pixel data of the large study in GiB (0 skips it)")
	flag.IntVar(&o.largeClients, "large-clients", 16, "clients streaming the large study at once")
	flag.DurationVar(&o.largeTimeout, "large-timeout", 45*time.Second, "bound of each large-study run")
	flag.IntVar(&o.largeRepeats, "large-repeats", 2, "large-study runs through the gateway (RSS must not grow between them)")
	flag.DurationVar(&o.timeout, "timeout", 15*time.Minute, "bound of the whole run; everything started is stopped when it passes")
	flag.BoolVar(&o.pin, "pin", false, "Linux with taskset: pin Orthanc and the load generator to CPU 0 and the gateway to CPU 1, as if the gateway had a core of its own (a PACS on another host); direct runs then get one core")
	var cases string
	flag.StringVar(&cases, "cases", "", "comma-separated endpoints to measure (qido-studies, search, wado-study, wado-instance, wado-frames, wado-metadata, wado-frames-nocache, cached-metadata, cached-search, cached-reval, cached-many, viewer-open, ohif-first-image, dimse); empty: all")
	flag.IntVar(&o.burstRequests, "burst", 1000, "requests with one fresh token at 64 clients for the introspection count")
	flag.Parse()

	def := func(d *time.Duration, full, quick time.Duration) {
		if *d == 0 {
			*d = full
			if o.quick {
				*d = quick
			}
		}
	}
	def(&o.warmup, 300*time.Millisecond, 200*time.Millisecond)
	def(&o.duration, 1500*time.Millisecond, 600*time.Millisecond)
	if o.rounds == 0 {
		o.rounds = 2
		if o.quick {
			o.rounds = 1
		}
	}
	if o.quick {
		o.largeGiB = 0
	}
	for _, s := range strings.Split(clients, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			fmt.Fprintf(os.Stderr, "bench: -clients: %q is not a positive number\n", s)
			os.Exit(2)
		}
		o.clients = append(o.clients, n)
	}

	if cases != "" {
		o.cases = map[string]bool{}
		for _, c := range strings.Split(cases, ",") {
			o.cases[strings.TrimSpace(c)] = true
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	start := time.Now()
	err := run(ctx, o)
	if err != nil {
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			fmt.Fprintf(os.Stderr, "bench: interrupted or out of time (%v); everything started was stopped\n", err)
		} else {
			fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		}
		os.Exit(1)
	}
	fmt.Printf("\ntotal wall time %s\n", time.Since(start).Round(time.Second))
}

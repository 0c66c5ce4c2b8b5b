package caddymodule

import (
	"errors"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// The collectors live for the whole process and are registered again in
// each new registry Caddy makes on a config load, so counts survive
// reloads. Labels are bounded: route prefixes come from the config, the
// rest are fixed words.
var (
	metricRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy",
		Subsystem: "smart_imaging",
		Name:      "requests_total",
		Help:      "Requests answered by smart_imaging, by route, action and outcome.",
	}, []string{"route", "action", "outcome", "code"})

	metricSourceDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "caddy",
		Subsystem: "smart_imaging",
		Name:      "source_duration_seconds",
		Help:      "Time spent in the image source (PACS or folder): study lookups and retrieves until the last byte.",
		Buckets:   prometheus.ExponentialBuckets(0.001, 2.5, 12),
	}, []string{"route", "operation"})

	metricAuthzDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "caddy",
		Subsystem: "smart_imaging",
		Name:      "authorize_duration_seconds",
		Help:      "Time to authorize a request (cache hits are microseconds; misses include the EHR round trip).",
		Buckets:   prometheus.ExponentialBuckets(0.00005, 3, 12),
	}, []string{"route"})
)

// AuthzCacheLookups counts authorization cache lookups by result ("hit",
// "miss", "collapsed"); authorizers with a cache report into it.
var AuthzCacheLookups = prometheus.NewCounterVec(prometheus.CounterOpts{
	Namespace: "caddy",
	Subsystem: "smart_imaging",
	Name:      "authz_cache_lookups_total",
	Help:      "Authorization cache lookups by result.",
}, []string{"result"})

func registerMetrics(reg prometheus.Registerer) error {
	if reg == nil {
		return nil
	}
	for _, c := range []prometheus.Collector{metricRequests, metricSourceDuration, metricAuthzDuration, AuthzCacheLookups, liveCaches} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return err
			}
		}
	}
	return nil
}

func outcomeOf(status int, allowed bool) string {
	switch {
	case !allowed && status >= 500:
		return "error"
	case !allowed:
		return "refused"
	case status >= 500:
		return "error"
	}
	return "ok"
}

func statusLabel(status int) string {
	if status == 0 {
		return "0"
	}
	return strconv.Itoa(status)
}

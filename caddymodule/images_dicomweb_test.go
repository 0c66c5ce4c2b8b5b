package caddymodule

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

func TestDICOMwebImagesCaddyfile(t *testing.T) {
	d := caddyfile.NewTestDispenser(`dicomweb https://pacs.example.org/dicom-web {
		lookup all-studies
		basic_auth gw {env.PACS_PASSWORD}
		qido_timeout 5s
		max_concurrent_qido 2
		pacs_url http://pacs-public.example.org/dicom-web
		to pacs1.example.org:443 pacs2.example.org:443
		lb_policy first
		health_uri /system
		transport http {
			response_header_timeout 10s
		}
	}`)
	var m DICOMwebImages
	if err := m.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	if m.BaseURL != "https://pacs.example.org/dicom-web" || m.Lookup != "all-studies" || m.Username != "gw" ||
		m.Password != "{env.PACS_PASSWORD}" || time.Duration(m.QIDOTimeout) != 5*time.Second || m.MaxConcurrentQIDO != 2 ||
		len(m.PACSURLs) != 1 {
		t.Errorf("parsed %+v", m)
	}
	p := m.Proxy
	if p == nil || len(p.Upstreams) != 2 || p.Upstreams[0].Dial != "pacs1.example.org:443" || p.LoadBalancing == nil ||
		p.HealthChecks == nil || p.TransportRaw == nil {
		t.Fatalf("reverse proxy options not passed on: %+v", p)
	}

	for _, bad := range []string{
		`dicomweb`,
		`dicomweb http://a/dicom-web extra`,
		`dicomweb http://a/dicom-web { basic_auth onlyuser }`,
		`dicomweb http://a/dicom-web { qido_timeout soon }`,
		`dicomweb http://a/dicom-web { handle_response { respond 200 } }`,
		`dicomweb http://a/dicom-web { rewrite /other }`,
		`dicomweb http://a/dicom-web { no_such_option 1 }`,
	} {
		var m DICOMwebImages
		if err := m.UnmarshalCaddyfile(caddyfile.NewTestDispenser(bad)); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
}

func TestTransportDefaults(t *testing.T) {
	decode := func(raw json.RawMessage) reverseproxy.HTTPTransport {
		t.Helper()
		var tr reverseproxy.HTTPTransport
		if err := json.Unmarshal(raw, &tr); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(raw), `"protocol":"http"`) {
			t.Errorf("transport %s lacks its protocol", raw)
		}
		return tr
	}
	raw, err := transportWithDefaults(nil, true)
	if err != nil {
		t.Fatal(err)
	}
	tr := decode(raw)
	if time.Duration(tr.KeepAlive.IdleConnTimeout) != DefaultPACSKeepAlive || tr.TLS == nil {
		t.Errorf("defaults: %s", raw)
	}
	if DefaultPACSKeepAlive >= time.Second {
		t.Error("the default keep-alive must stay below Orthanc's 1 s")
	}
	// The user's own settings win.
	raw, err = transportWithDefaults(json.RawMessage(`{"protocol":"http","keep_alive":{"idle_timeout":300000000},"response_header_timeout":1000000000}`), false)
	if err != nil {
		t.Fatal(err)
	}
	tr = decode(raw)
	if tr.KeepAlive.IdleConnTimeout != caddy.Duration(300*time.Millisecond) || tr.ResponseHeaderTimeout != caddy.Duration(time.Second) || tr.TLS != nil {
		t.Errorf("user settings lost: %s", raw)
	}
}

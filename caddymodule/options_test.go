package caddymodule

import (
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/smart-imaging/smart_imaging/authz/dual"
	"github.com/smart-imaging/smart_imaging/internal/delay"
)

// TestUnknownOptionListsTheTable checks, for every module block, that an
// unknown option's error lists exactly the module's table, and that every
// name in the table is one the parser knows.
func TestUnknownOptionListsTheTable(t *testing.T) {
	// Each case wraps an option line into a Caddyfile that reaches the
	// module's block.
	handler := func(line string) error {
		var h Handler
		return h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("smart_imaging {\n" + line + "\n}"))
	}
	guest := func(u caddyfile.Unmarshaler, head string) func(string) error {
		return func(line string) error {
			return u.UnmarshalCaddyfile(caddyfile.NewTestDispenser(head + " {\n" + line + "\n}"))
		}
	}
	for _, c := range []struct {
		what  string
		table subdirectives
		parse func(line string) error
	}{
		{"smart_imaging", (&Handler{}).subdirectives(), handler},
		{"dynamic_config", (&DynamicConfig{}).subdirectives(), func(line string) error {
			return handler("dynamic_config {\n" + line + "\n}")
		}},
		{"delay", delaySubdirectives(&delay.Config{}), func(line string) error { return handler("delay {\n" + line + "\n}") }},
		{"authz mock", (&MockAuthz{}).subdirectives(), guest(&MockAuthz{}, "mock")},
		{"authz smart-on-fhir", (&SmartAuthz{}).subdirectives(), guest(&SmartAuthz{}, "smart-on-fhir")},
		{"authz smart-on-fhir-independent", (&DualAuthz{}).subdirectives(), guest(&DualAuthz{}, "smart-on-fhir-independent")},
		{"app", appSubdirectives(&dual.App{}), func(line string) error {
			return guest(&DualAuthz{}, "smart-on-fhir-independent")("app c1 {\n" + line + "\n}")
		}},
		{"images folder", (&FolderImages{}).subdirectives(), guest(&FolderImages{}, "folder /studies")},
		{"images dimse", (&DIMSEImages{}).subdirectives(), guest(&DIMSEImages{}, "dimse pacs:104")},
	} {
		t.Run(c.what, func(t *testing.T) {
			err := c.parse("no_such_option 1")
			if err == nil {
				t.Fatal("an unknown option was accepted")
			}
			m := regexp.MustCompile(`unrecognized (.+) option 'no_such_option' \(known: ([^)]*)\)`).FindStringSubmatch(err.Error())
			if m == nil {
				t.Fatalf("error %q does not list the known options", err)
			}
			if m[1] != c.what {
				t.Errorf("error names block %q, want %q", m[1], c.what)
			}
			if got := strings.Split(m[2], ", "); !slices.Equal(got, c.table.names()) {
				t.Errorf("known options %v, table %v", got, c.table.names())
			}
			for _, name := range c.table.names() {
				if err := c.parse(name); err != nil && strings.Contains(err.Error(), "unrecognized") {
					t.Errorf("%s is in the table but the parser does not know it: %v", name, err)
				}
			}
		})
	}
}

// TestNestedErrorNamesItsLine checks that an error inside a guest module's
// block names that line, and only that line.
func TestNestedErrorNamesItsLine(t *testing.T) {
	for name, c := range map[string]struct {
		caddyfile string
		line      string
	}{
		"authz smart-on-fhir": {"smart_imaging {\n\timages folder /studies\n\tauthz smart-on-fhir {\n\t\tno_such x\n\t}\n}", "Testfile:4"},
		"authz mock":          {"smart_imaging {\n\tauthz mock {\n\t\tpatient p1\n\t\tmrn_system a b\n\t}\n}", "Testfile:4"},
		"images dimse":        {"smart_imaging {\n\timages dimse pacs:104 {\n\t\tcalled_ae P\n\t\tcache_ttl soon\n\t}\n}", "Testfile:4"},
		"app of smart-on-fhir-independent": {
			"smart_imaging {\n\tauthz smart-on-fhir-independent {\n\t\tapp c1 {\n\t\t\tjwks_url\n\t\t}\n\t}\n}", "Testfile:4"},
		"dynamic_config authz": {
			"smart_imaging {\n\tdynamic_config {\n\t\tallow_hosts a\n\t\tauthz smart-on-fhir {\n\t\t\ttimeout -1s\n\t\t}\n\t}\n}", "Testfile:5"},
	} {
		t.Run(name, func(t *testing.T) {
			var h Handler
			err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(c.caddyfile))
			if err == nil {
				t.Fatal("accepted")
			}
			if n := strings.Count(err.Error(), "Testfile:"); n != 1 || !strings.Contains(err.Error(), c.line) {
				t.Errorf("error %q: want exactly one position, %s", err, c.line)
			}
		})
	}
}

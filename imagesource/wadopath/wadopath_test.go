package wadopath

import (
	"errors"
	"strings"
	"testing"
)

const (
	st = "1.2.840.113619.2.55.3"
	se = "1.2.840.113619.2.55.3.1"
	in = "1.2.840.113619.2.55.3.1.7"
)

func TestParseAllowed(t *testing.T) {
	tests := []struct {
		path     string
		level    Level
		resource Resource
		frames   []int
	}{
		{"studies/" + st, Study, Objects, nil},
		{"studies/" + st + "/metadata", Study, Metadata, nil},
		{"studies/" + st + "/rendered", Study, Rendered, nil},
		{"studies/" + st + "/thumbnail", Study, Thumbnail, nil},
		{"studies/" + st + "/series/" + se, Series, Objects, nil},
		{"studies/" + st + "/series/" + se + "/metadata", Series, Metadata, nil},
		{"studies/" + st + "/series/" + se + "/rendered", Series, Rendered, nil},
		{"studies/" + st + "/series/" + se + "/instances/" + in, Instance, Objects, nil},
		{"studies/" + st + "/series/" + se + "/instances/" + in + "/metadata", Instance, Metadata, nil},
		{"studies/" + st + "/series/" + se + "/instances/" + in + "/rendered", Instance, Rendered, nil},
		{"studies/" + st + "/series/" + se + "/instances/" + in + "/frames/1", Instance, Frames, []int{1}},
		{"studies/" + st + "/series/" + se + "/instances/" + in + "/frames/2,4,1", Instance, Frames, []int{2, 4, 1}},
		{"studies/" + st + "/series/" + se + "/instances/" + in + "/frames/3/rendered", Frame, Rendered, []int{3}},
		{"studies/" + st + "/series/" + se + "/instances/" + in + "/bulk/7fe00010", Instance, Bulkdata, nil},
		{"studies/" + st + "/series/" + se + "/instances/" + in + "/bulkdata/7FE00010", Instance, Bulkdata, nil},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			p, err := Parse(tt.path)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if p.Level() != tt.level || p.Resource != tt.resource {
				t.Errorf("level %v resource %q, want %v %q", p.Level(), p.Resource, tt.level, tt.resource)
			}
			if len(p.Frames) != len(tt.frames) {
				t.Errorf("frames %v, want %v", p.Frames, tt.frames)
			}
			if p.String() != tt.path {
				t.Errorf("String() = %q, want the input back", p.String())
			}
		})
	}
}

func TestParseRefused(t *testing.T) {
	refused := []string{
		"",
		"studies",
		"studies/",
		"studies/" + st + "/",
		"/studies/" + st,
		"studies//" + st,
		"studies/" + st + "/../" + st,
		"studies/" + st + "/series/..",
		"studies/" + st + "/%2e%2e/x",
		"studies/" + st + "%2Fseries",
		"studies/" + st + "/series/" + se + "/instances/" + in + "/frames/0",
		"studies/" + st + "/series/" + se + "/instances/" + in + "/frames/-1",
		"studies/" + st + "/series/" + se + "/instances/" + in + "/frames/1,,2",
		"studies/" + st + "/series/" + se + "/instances/" + in + "/frames/",
		"studies/" + st + "/series/" + se + "/instances/" + in + "/frames/9999999999",
		"studies/" + st + "/series/" + se + "/instances/" + in + "/frames/01",
		"studies/" + st + "/series/" + se + "/instances/" + in + "/frames/2,00",
		"studies/" + st + "/frames/1",
		"studies/" + st + "/bulkdata/7fe00010",
		"studies/" + st + "/series/" + se + "/instances/" + in + "/bulk",
		"studies/" + st + "/series/" + se + "/instances/" + in + "/bulk/../../x",
		"studies/" + st + "/series/" + se + "/instances/" + in + "/bulk/zz",
		"studies/*",
		"studies/1.2.*",
		"studies/1.2.3,1.2.4",
		"studies/01.2.3",
		"studies/1..2",
		"studies/1.2.",
		"studies/abc",
		"studies/" + strings.Repeat("1.", 40) + "1",
		"patients",
		"instances/" + in,
		"tools/find",
		"wado",
		"studies/" + st + "/series",
		"studies/" + st + "/instances/" + in,
		"studies/" + st + "/metadata/extra",
		"studies/" + st + "/series/" + se + "/series/" + se,
		"studies/" + st + "?x=1",
		"studies/" + st + "#x",
		"studies/" + st + ";x",
		"studies/" + st + `\x`,
		"studies/" + st + "/" + strings.Repeat("a/", 600),
		"studies/" + st + "/series/" + se + "/instances/" + in + "/frames/" + strings.Repeat("1,", MaxFrames) + "1",
		// One frame asked for many times (64 copies of an 18 MB frame came
		// out of one request before duplicates were refused).
		"studies/" + st + "/series/" + se + "/instances/" + in + "/frames/1,1",
		"studies/" + st + "/series/" + se + "/instances/" + in + "/frames/2,4,2",
		"studies/" + st + "/series/" + se + "/instances/" + in + "/frames/7,07",
		"studies/" + st + "/series/" + se + "/instances/" + in + "/frames/" + strings.Repeat("3,", 63) + "3",
		"studies/" + st + "/series/" + se + "/instances/" + in + "/frames/5,5/rendered",
	}
	for _, p := range refused {
		t.Run(p, func(t *testing.T) {
			if got, err := Parse(p); err == nil {
				t.Fatalf("Parse(%q) accepted: %+v", p, got)
			} else if !errors.Is(err, ErrNotAllowed) {
				t.Errorf("error %v does not wrap ErrNotAllowed", err)
			}
		})
	}
}

func TestCheckUID(t *testing.T) {
	for _, ok := range []string{"1", "0", "1.2.3", "2.25.31415926535897932384", "1.0.2"} {
		if err := CheckUID(ok); err != nil {
			t.Errorf("CheckUID(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", ".", "1.", ".1", "1..2", "1.02", "a.b", "1.2 ", "1,2", "1.2*", strings.Repeat("1", 65)} {
		if CheckUID(bad) == nil {
			t.Errorf("CheckUID(%q) accepted", bad)
		}
	}
}

// FuzzParse checks that Parse never panics and that whatever it accepts is
// on the allow-list: its canonical form parses back to itself and holds
// nothing but the allowed words, UIDs, numbers and tags.
func FuzzParse(f *testing.F) {
	f.Add("studies/" + st)
	f.Add("studies/" + st + "/series/" + se + "/instances/" + in + "/frames/1,2/rendered")
	f.Add("studies/" + st + "/series/" + se + "/instances/" + in + "/bulk/7fe00010/0")
	f.Add("studies/../patients")
	f.Add("studies/1.2/%2e%2e")
	f.Fuzz(func(t *testing.T, s string) {
		p, err := Parse(s)
		if err != nil {
			return
		}
		if p.String() != s {
			t.Fatalf("accepted %q but canonical form is %q", s, p.String())
		}
		for _, seg := range strings.Split(s, "/") {
			if seg == "" || seg == "." || seg == ".." || strings.ContainsAny(seg, "%?#\\*") {
				t.Fatalf("accepted %q with segment %q", s, seg)
			}
		}
		again, err := Parse(p.String())
		if err != nil || again.String() != p.String() {
			t.Fatalf("canonical form %q does not parse back: %v", p.String(), err)
		}
	})
}

package fhir

// NewSearchBundle starts a searchset Bundle with total 0 and, when self is
// not empty, a self link.
func NewSearchBundle(self string) *Bundle {
	total := 0
	b := &Bundle{Type: "searchset", Total: &total}
	if self != "" {
		b.Link = []BundleLink{{Relation: "self", URL: self}}
	}
	return b
}

// AddMatch appends a search match and counts it in total.
func (b *Bundle) AddMatch(fullURL string, r Resource) {
	b.Entry = append(b.Entry, BundleEntry{FullURL: fullURL, Resource: r, Search: &BundleSearch{Mode: "match"}})
	if b.Total == nil {
		b.Total = new(int)
	}
	*b.Total++
}

// AddInclude appends an included resource (not counted in total). An entry
// with the same non-empty fullURL already in the bundle is not added again,
// so an Endpoint shared by several studies appears once.
func (b *Bundle) AddInclude(fullURL string, r Resource) {
	if fullURL != "" && b.HasEntry(fullURL) {
		return
	}
	b.Entry = append(b.Entry, BundleEntry{FullURL: fullURL, Resource: r, Search: &BundleSearch{Mode: "include"}})
}

// HasEntry reports whether an entry with this fullURL is in the bundle.
func (b *Bundle) HasEntry(fullURL string) bool {
	for _, e := range b.Entry {
		if e.FullURL == fullURL {
			return true
		}
	}
	return false
}

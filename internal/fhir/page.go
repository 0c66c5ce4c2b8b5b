package fhir

import (
	"maps"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/smart-imaging/smart_imaging/imagesource"
	"github.com/smart-imaging/smart_imaging/imagesource/dicomjson"
)

// DefaultPageSize is the page size of a search without _count.
const DefaultPageSize = 100

// SelectStudies applies a search's _lastUpdated filters (AND-ed; a study
// without a known update time never matches one) and sorts what is kept in
// a stable order, newest first (StudyDate, StudyTime) then by
// StudyInstanceUID, so that paging is consistent. studies is not modified.
func SelectStudies(studies []imagesource.Study, lastUpdated []DateFilter) []imagesource.Study {
	kept := studies[:0:0]
	for _, st := range studies {
		if len(lastUpdated) > 0 {
			t, ok := StudyUpdated(st.Attributes, nil)
			if !ok {
				continue
			}
			match := true
			for _, f := range lastUpdated {
				match = match && f.Matches(t)
			}
			if !match {
				continue
			}
		}
		kept = append(kept, st)
	}
	slices.SortStableFunc(kept, func(a, b imagesource.Study) int {
		da := a.Attributes.String(dicomjson.TagStudyDate) + a.Attributes.String(dicomjson.TagStudyTime)
		db := b.Attributes.String(dicomjson.TagStudyDate) + b.Attributes.String(dicomjson.TagStudyTime)
		if c := strings.Compare(db, da); c != 0 {
			return c
		}
		return strings.Compare(a.Attributes.String(dicomjson.TagStudyInstanceUID), b.Attributes.String(dicomjson.TagStudyInstanceUID))
	})
	return kept
}

// Page is one page of Total search matches: entries [From, To), Count per
// page.
type Page struct {
	From, To, Count, Total int
}

// PageOf is the page a search's _offset and _count (0: DefaultPageSize)
// select among total matches.
func PageOf(total, offset, count int) Page {
	if count == 0 {
		count = DefaultPageSize
	}
	from := min(offset, total)
	return Page{From: from, To: min(from+count, total), Count: count, Total: total}
}

// Links are the page's self, next (when matches follow) and previous (when
// matches precede) links: searchURL ("https://…/fhir/ImagingStudy") with q
// and the page's _offset and _count.
func (pg Page) Links(searchURL string, q url.Values) []BundleLink {
	links := []BundleLink{{Relation: "self", URL: pageURL(searchURL, q, pg.From, pg.Count)}}
	if pg.To < pg.Total {
		links = append(links, BundleLink{Relation: "next", URL: pageURL(searchURL, q, pg.To, pg.Count)})
	}
	if pg.From > 0 {
		links = append(links, BundleLink{Relation: "previous", URL: pageURL(searchURL, q, max(0, pg.From-pg.Count), pg.Count)})
	}
	return links
}

func pageURL(searchURL string, q url.Values, offset, count int) string {
	q = maps.Clone(q)
	if q == nil {
		q = url.Values{}
	}
	q.Set("_offset", strconv.Itoa(offset))
	q.Set("_count", strconv.Itoa(count))
	return searchURL + "?" + q.Encode()
}

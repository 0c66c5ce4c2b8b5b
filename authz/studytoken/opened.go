package studytoken

import (
	"sync"
	"time"
)

// maxOpened bounds how many opened tokens a keyring remembers. A viewer
// uses one token for every request of a study (series, instances,
// frames: tens to thousands of requests), so remembering a few thousand
// covers every study being viewed at once on a busy gateway.
const maxOpened = 4096

// openedCache remembers the claims of tokens that opened, keyed by the
// exact token text, so each token is decrypted once rather than on every
// request. Only tokens that decrypted and carried complete claims are
// stored, so it cannot be filled by guessing; expiry is checked on every
// use. A keyring's cache dies with it, so a key removed from the
// configuration opens nothing after the reload.
type openedCache struct {
	mu sync.Mutex
	m  map[string]Claims
}

func (c *openedCache) get(token string) (Claims, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cl, ok := c.m[token]
	return cl, ok
}

func (c *openedCache) put(token string, cl Claims, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = make(map[string]Claims)
	}
	if len(c.m) >= maxOpened {
		// Drop the expired, then an eighth of the rest (map order is
		// unspecified, which is good enough for a cache of this kind).
		for t, old := range c.m {
			if !now.Before(old.Expiry) {
				delete(c.m, t)
			}
		}
		for t := range c.m {
			if len(c.m) < maxOpened-maxOpened/8 {
				break
			}
			delete(c.m, t)
		}
	}
	c.m[token] = cl
}

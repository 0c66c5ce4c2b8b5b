package smart

import (
	"container/list"
	"sync"
	"time"
)

// ttlCache is a bounded map whose entries expire. When full, the entry
// inserted longest ago is evicted first; expired entries are dropped when
// met. Safe for concurrent use.
type ttlCache[V any] struct {
	mu    sync.Mutex
	max   int
	items map[string]*list.Element
	order *list.List // front: oldest insertion
}

type cacheItem[V any] struct {
	key     string
	val     V
	expires time.Time
}

func newTTLCache[V any](max int) *ttlCache[V] {
	if max < 1 {
		max = 1
	}
	return &ttlCache[V]{max: max, items: map[string]*list.Element{}, order: list.New()}
}

// get returns the value stored under key if it has not expired at now.
func (c *ttlCache[V]) get(key string, now time.Time) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var zero V
	el, ok := c.items[key]
	if !ok {
		return zero, false
	}
	it := el.Value.(*cacheItem[V])
	if !now.Before(it.expires) {
		c.order.Remove(el)
		delete(c.items, key)
		return zero, false
	}
	return it.val, true
}

// put stores v under key until expires (a time not after now stores
// nothing), evicting expired entries at the old end and then the oldest
// entries while the cache is full.
func (c *ttlCache[V]) put(key string, v V, expires, now time.Time) {
	if !now.Before(expires) {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[key]; ok {
		c.order.Remove(el)
		delete(c.items, key)
	}
	// Sweep a few expired entries from the old end (cheap, amortised).
	for i := 0; i < 4; i++ {
		el := c.order.Front()
		if el == nil || now.Before(el.Value.(*cacheItem[V]).expires) {
			break
		}
		c.order.Remove(el)
		delete(c.items, el.Value.(*cacheItem[V]).key)
	}
	for len(c.items) >= c.max {
		el := c.order.Front()
		c.order.Remove(el)
		delete(c.items, el.Value.(*cacheItem[V]).key)
	}
	c.items[key] = c.order.PushBack(&cacheItem[V]{key: key, val: v, expires: expires})
}

// delete removes key.
func (c *ttlCache[V]) delete(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[key]; ok {
		c.order.Remove(el)
		delete(c.items, key)
	}
}

// len reports the number of entries, expired ones included.
func (c *ttlCache[V]) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.items)
}

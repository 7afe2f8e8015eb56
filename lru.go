package rediscache

import (
	"container/list"
	"sync"
	"time"
)

// boundedLRU holds values up to a number of bytes, dropping the least
// recently used first, each value until it expires. Values are shared with
// every reader, so nothing may modify one once it is held.
type boundedLRU[V any] struct {
	limit   int64
	maxItem int64 // a larger value is not held: it would evict too much

	mu    sync.Mutex
	used  int64
	items map[string]*list.Element
	lru   *list.List // front = most recently used
}

type lruItem[V any] struct {
	key     string
	val     V
	size    int64     // bytes counted against the limit
	expires time.Time // zero: until evicted
}

func newBoundedLRU[V any](limit, maxItem int64) *boundedLRU[V] {
	return &boundedLRU[V]{limit: limit, maxItem: maxItem, items: make(map[string]*list.Element), lru: list.New()}
}

// get returns the value held for key, unless it expired.
func (c *boundedLRU[V]) get(key string) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var zero V
	el, ok := c.items[key]
	if !ok {
		return zero, false
	}
	it := el.Value.(*lruItem[V])
	if !it.expires.IsZero() && time.Now().After(it.expires) {
		c.removeLocked(el)
		return zero, false
	}
	c.lru.MoveToFront(el)
	return it.val, true
}

// put holds val for key, replacing what was held; a value too large to be
// held still replaces it, by nothing.
func (c *boundedLRU[V]) put(key string, val V, size int64, expires time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[key]; ok {
		c.removeLocked(el)
	}
	if size > c.maxItem {
		return
	}
	for c.used+size > c.limit && c.lru.Len() > 0 {
		c.removeLocked(c.lru.Back())
	}
	c.items[key] = c.lru.PushFront(&lruItem[V]{key: key, val: val, size: size, expires: expires})
	c.used += size
}

// fits reports whether a value of size bytes may be held at all.
func (c *boundedLRU[V]) fits(size int64) bool { return size <= c.maxItem }

// remove drops key's value and reports whether there was one.
func (c *boundedLRU[V]) remove(key string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.items[key]
	if ok {
		c.removeLocked(el)
	}
	return ok
}

// removeMatching drops the values whose key matches, and counts them.
func (c *boundedLRU[V]) removeMatching(match func(key string) bool) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	var n int64
	for k, el := range c.items {
		if match(k) {
			c.removeLocked(el)
			n++
		}
	}
	return n
}

func (c *boundedLRU[V]) removeLocked(el *list.Element) {
	it := el.Value.(*lruItem[V])
	c.lru.Remove(el)
	delete(c.items, it.key)
	c.used -= it.size
}

func (c *boundedLRU[V]) clear() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.items = make(map[string]*list.Element)
	c.lru.Init()
	c.used = 0
}

func (c *boundedLRU[V]) size() (entries int, bytes int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.items), c.used
}

// heldCopy is a validated copy: a decoded entry and the tail of the stored
// value it was decoded from.
type heldCopy struct {
	e    *entry
	tail []byte
}

// newEntryLRU holds decoded entries; none larger than an eighth of limit.
func newEntryLRU[V any](limit int64) *boundedLRU[V] { return newBoundedLRU[V](limit, limit/8) }

// entryMemSize approximates the memory an entry held in process costs:
// the Go structures around the bytes cost more than the bytes themselves
// for small responses.
func entryMemSize(key string, e *entry) int64 {
	size := int64(len(key)+cap(e.body)+cap(e.decoded)) + lruItemOverhead
	for k, vs := range e.header {
		size += int64(len(k)) + 64
		for _, v := range vs {
			size += int64(len(v)) + 16
		}
	}
	for _, g := range e.gens {
		size += int64(len(g.key)+len(g.val)) + 32
	}
	return size
}

// lruItemOverhead is the entry, the item, its list element and map slot.
const lruItemOverhead = 512

package rediscache

import (
	"bytes"
	"container/list"
	"sync"
	"time"
)

// entryLRU holds decoded entries in process, up to a number of bytes,
// dropping the least recently used first. The entries it holds are shared
// by every request that reads them, so nothing may modify them.
type entryLRU struct {
	limit int64

	mu      sync.Mutex
	used    int64
	entries map[string]*list.Element
	lru     *list.List
}

type lruItem struct {
	key     string
	e       *entry
	tail    []byte    // the stored value's entryTail, when validated against it
	size    int64     // bytes counted against the limit
	expires time.Time // zero: until evicted
}

func newEntryLRU(limit int64) *entryLRU {
	return &entryLRU{limit: limit, entries: make(map[string]*list.Element), lru: list.New()}
}

// get returns the item held for key, unless it expired.
func (c *entryLRU) get(key string) *lruItem {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.entries[key]
	if !ok {
		return nil
	}
	it := el.Value.(*lruItem)
	if !it.expires.IsZero() && time.Now().After(it.expires) {
		c.removeLocked(el)
		return nil
	}
	c.lru.MoveToFront(el)
	return it
}

// put holds e for key, replacing what was held. An entry larger than an
// eighth of the limit is not held: it would evict too much.
func (c *entryLRU) put(key string, e *entry, tail []byte, expires time.Time) {
	size := entryMemSize(key, e)
	if size > c.limit/8 {
		c.remove(key)
		return
	}
	it := &lruItem{key: key, e: e, tail: tail, size: size, expires: expires}
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.entries[key]; ok {
		c.removeLocked(el)
	}
	for c.used+size > c.limit && c.lru.Len() > 0 {
		c.removeLocked(c.lru.Back())
	}
	c.entries[key] = c.lru.PushFront(it)
	c.used += size
}

// remove drops key's item.
func (c *entryLRU) remove(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.entries[key]; ok {
		c.removeLocked(el)
	}
}

// removeIf drops key's item if it is the one validated against tail.
func (c *entryLRU) removeIf(key string, tail []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.entries[key]; ok && bytes.Equal(el.Value.(*lruItem).tail, tail) {
		c.removeLocked(el)
	}
}

func (c *entryLRU) removeLocked(el *list.Element) {
	it := el.Value.(*lruItem)
	c.lru.Remove(el)
	delete(c.entries, it.key)
	c.used -= it.size
}

func (c *entryLRU) clear() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.entries = make(map[string]*list.Element)
	c.lru.Init()
	c.used = 0
}

func (c *entryLRU) size() (entries int, bytes int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries), c.used
}

// entryMemSize approximates the memory an entry held in process costs:
// the Go structures around the bytes cost more than the bytes themselves
// for small responses.
func entryMemSize(key string, e *entry) int64 {
	size := int64(len(key)+cap(e.body)) + lruItemOverhead
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

package rediscache

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"time"
)

// memoryStore is the embedded store used when no Redis is configured: a
// byte-bounded LRU with per-entry expiry, plus generations and locks with
// the same semantics as the Redis store.
type memoryStore struct {
	items *boundedLRU[[]byte]

	mu    sync.Mutex // guards the generations and locks
	gensM map[string]memGen
	locks map[string]memLock
	last  int64 // last hard generation handed out, to keep them unique
}

type memGen struct {
	val     string
	expires time.Time
}

type memLock struct {
	token   string
	expires time.Time
}

// memOverhead approximates the per-entry bookkeeping cost, so that many
// tiny entries cannot exceed the limit by much.
const memOverhead = 128

func newMemoryStore(limit int64) *memoryStore {
	return &memoryStore{
		items: newBoundedLRU[[]byte](limit, limit),
		gensM: make(map[string]memGen),
		locks: make(map[string]memLock),
	}
}

func (m *memoryStore) kind() string { return "memory" }

func (m *memoryStore) close() error { return nil }

// get ignores tail: the value is already in process.
func (m *memoryStore) get(_ context.Context, key string, gens []string, _ []byte) ([]byte, []string, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	cur := m.genValuesLocked(gens, time.Now())
	val, _ := m.items.get(key)
	return val, cur, false, nil
}

func (m *memoryStore) genValuesLocked(gens []string, now time.Time) []string {
	cur := make([]string, len(gens))
	for i, g := range gens {
		cur[i] = zeroGen
		if v, ok := m.gensM[g]; ok {
			if now.After(v.expires) {
				delete(m.gensM, g)
				continue
			}
			cur[i] = v.val
		}
	}
	return cur
}

func (m *memoryStore) gens(_ context.Context, gens []string) ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.genValuesLocked(gens, time.Now()), nil
}

func (m *memoryStore) set(_ context.Context, key string, value []byte, ttl time.Duration) error {
	// The caller may reuse its buffer; the store keeps its own copy.
	value = append([]byte(nil), value...)
	m.items.put(key, value, int64(len(key)+len(value))+memOverhead, time.Now().Add(ttl))
	return nil
}

func (m *memoryStore) setIf(ctx context.Context, key string, value []byte, ttl time.Duration, guard, guardVal string) (bool, error) {
	// Under the lock, a purge's epoch bump comes either before the check,
	// which then fails, or after the write, which its deletion then sees.
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.genValuesLocked([]string{guard}, time.Now())[0] != guardVal {
		return false, nil
	}
	return true, m.set(ctx, key, value, ttl)
}

func (m *memoryStore) del(_ context.Context, keys ...string) (int64, error) {
	var n int64
	for _, k := range keys {
		if m.items.remove(k) {
			n++
		}
	}
	return n, nil
}

func (m *memoryStore) bump(_ context.Context, soft bool, ttl time.Duration, gens ...string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := time.Now()
	cur := m.genValuesLocked(gens, now)
	for i, g := range gens {
		h, s := parseGen(cur[i])
		if soft {
			s++
		} else {
			h = max(now.UnixMicro(), h+1, m.last+1)
			m.last = h
		}
		m.gensM[g] = memGen{val: strconv.FormatInt(h, 10) + ":" + strconv.FormatInt(s, 10), expires: now.Add(ttl)}
	}
	m.sweepGensLocked(now)
	return nil
}

// sweepGensLocked drops expired generations once the map has grown, so
// purges of many distinct URIs cannot grow it without bound.
func (m *memoryStore) sweepGensLocked(now time.Time) {
	if len(m.gensM) < 4096 {
		return
	}
	for k, v := range m.gensM {
		if now.After(v.expires) {
			delete(m.gensM, k)
		}
	}
}

func parseGen(v string) (hard, soft int64) {
	h, s, _ := strings.Cut(v, ":")
	hard, _ = strconv.ParseInt(h, 10, 64)
	soft, _ = strconv.ParseInt(s, 10, 64)
	return hard, soft
}

func (m *memoryStore) scanDelete(_ context.Context, match string, keep func(string) bool) (int64, error) {
	return m.items.removeMatching(func(k string) bool {
		return globMatch(match, k) && (keep == nil || !keep(k))
	}), nil
}

func (m *memoryStore) lock(_ context.Context, key, token string, ttl time.Duration) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := time.Now()
	if l, ok := m.locks[key]; ok && now.Before(l.expires) {
		return false, nil
	}
	m.locks[key] = memLock{token: token, expires: now.Add(ttl)}
	return true, nil
}

func (m *memoryStore) unlock(_ context.Context, key, token string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if l, ok := m.locks[key]; ok && l.token == token {
		delete(m.locks, key)
	}
	return nil
}

func (m *memoryStore) info(context.Context) map[string]any {
	entries, used := m.items.size()
	return map[string]any{
		"kind":        "memory",
		"used_memory": used,
		"maxmemory":   m.items.limit,
		"entries":     entries,
	}
}

// globMatch reports whether s matches a Redis-style glob: '*', '?',
// '[...]' classes (with '^' negation and ranges) and '\' escapes.
func globMatch(pattern, s string) bool {
	for len(pattern) > 0 {
		switch pattern[0] {
		case '*':
			for len(pattern) > 0 && pattern[0] == '*' {
				pattern = pattern[1:]
			}
			if pattern == "" {
				return true
			}
			for i := 0; i <= len(s); i++ {
				if globMatch(pattern, s[i:]) {
					return true
				}
			}
			return false
		case '?':
			if s == "" {
				return false
			}
			pattern, s = pattern[1:], s[1:]
		case '[':
			if s == "" {
				return false
			}
			matched, rest, ok := matchClass(pattern[1:], s[0])
			if !ok || !matched {
				return false
			}
			pattern, s = rest, s[1:]
		case '\\':
			if len(pattern) > 1 {
				pattern = pattern[1:]
			}
			fallthrough
		default:
			if s == "" || pattern[0] != s[0] {
				return false
			}
			pattern, s = pattern[1:], s[1:]
		}
	}
	return s == ""
}

// matchClass matches c against a class body (after '['), returning the
// pattern after the closing ']'.
func matchClass(p string, c byte) (matched bool, rest string, ok bool) {
	negate := len(p) > 0 && p[0] == '^'
	if negate {
		p = p[1:]
	}
	for i := 0; i < len(p); i++ {
		switch {
		case p[i] == ']' && i > 0:
			return matched != negate, p[i+1:], true
		case p[i] == '\\' && i+1 < len(p):
			i++
			if p[i] == c {
				matched = true
			}
		case i+2 < len(p) && p[i+1] == '-' && p[i+2] != ']':
			lo, hi := p[i], p[i+2]
			if lo > hi {
				lo, hi = hi, lo
			}
			if c >= lo && c <= hi {
				matched = true
			}
			i += 2
		default:
			if p[i] == c {
				matched = true
			}
		}
	}
	return false, "", false
}

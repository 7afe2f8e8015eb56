package rediscache

import (
	"bytes"
	"context"
	"strconv"
	"strings"
	"sync"
	"time"
)

// memoryStore is the embedded store used when no Redis is configured: a
// byte-bounded LRU with per-entry expiry, holding entries and generations
// alike (so generations count towards the limit, expire without sweeps and
// may be evicted, which reads as unknown, as in Redis), plus locks and the
// recent pattern purges, with the same semantics as the Redis store.
type memoryStore struct {
	items *boundedLRU[[]byte]

	mu     sync.Mutex // serializes guarded writes, bumps and locks
	locks  map[string]memLock
	last   int64 // last hard generation handed out, to keep them unique
	purged []memPurge
}

type memLock struct {
	token   string
	expires time.Time
}

// memPurge is a remembered pattern or key purge.
type memPurge struct {
	glob string
	at   time.Time
}

// memOverhead approximates the per-entry bookkeeping cost, so that many
// tiny entries cannot exceed the limit by much.
const memOverhead = 128

func newMemoryStore(limit int64) *memoryStore {
	return &memoryStore{
		items: newBoundedLRU[[]byte](limit, limit),
		locks: make(map[string]memLock),
	}
}

func (m *memoryStore) kind() string { return "memory" }

func (m *memoryStore) close() error { return nil }

// get returns the value at key, or reports it unchanged when its tail is
// tail: values are never modified in place, so an equal tail (random id
// and checksum) is the same value. The entry is read before its
// generations, so a purge in between is seen.
func (m *memoryStore) get(_ context.Context, key string, gens []string, tail []byte) ([]byte, []string, bool, error) {
	val, _ := m.items.get(key)
	if tail != nil && val != nil && bytes.Equal(entryTail(val), tail) {
		return nil, m.genValues(gens), true, nil
	}
	return val, m.genValues(gens), false, nil
}

func (m *memoryStore) genValues(gens []string) []string {
	cur := make([]string, len(gens))
	for i, g := range gens {
		if v, ok := m.items.get(g); ok {
			cur[i] = string(v)
		}
	}
	return cur
}

func (m *memoryStore) gens(_ context.Context, gens []string) ([]string, error) {
	return m.genValues(gens), nil
}

func (m *memoryStore) set(_ context.Context, key string, value []byte, ttl time.Duration) error {
	// The caller may reuse its buffer; the store keeps its own copy.
	value = append([]byte(nil), value...)
	m.items.put(key, value, int64(len(key)+len(value))+memOverhead, time.Now().Add(ttl))
	return nil
}

// setIf checks and writes under the lock that bumps take, so a purge comes
// either before the check, which then fails, or after the write.
func (m *memoryStore) setIf(ctx context.Context, key string, value []byte, ttl time.Duration, g storeGuard) (storeOutcome, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := time.Now()
	elapsed, wall := purgeWindow(g.lookupAt)
	since := now.Add(-elapsed)
	if w := time.UnixMicro(wall); w.Before(since) {
		since = w
	}
	cur := m.genValues(genKeys(g.gens))
	var births []genStamp
	for i, st := range g.gens {
		switch {
		case cur[i] == genMissing && strings.HasPrefix(st.val, "b"):
			births = append(births, st)
		case cur[i] == genMissing:
			return outcomeGenLost, nil
		case cur[i] != st.val && isFreshBirth(cur[i]) && isFreshBirth(st.val):
			return outcomeBirthConflict, nil
		case cur[i] != st.val:
			return outcomePurged, nil
		case i >= g.late:
			if h, err := strconv.ParseInt(hardPart(cur[i]), 10, 64); err == nil && h > since.UnixMicro() {
				return outcomePurged, nil
			}
		}
	}
	for _, p := range m.purged {
		if p.at.After(since) && globMatch(p.glob, key) {
			return outcomePatternPurged, nil
		}
	}
	for _, st := range births {
		_ = m.set(ctx, st.key, []byte(st.val), g.genTTL)
	}
	return outcomeStored, m.set(ctx, key, value, ttl)
}

func genKeys(stamps []genStamp) []string {
	keys := make([]string, len(stamps))
	for i, st := range stamps {
		keys[i] = st.key
	}
	return keys
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

func (m *memoryStore) bump(ctx context.Context, soft bool, ttl time.Duration, gens ...string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := time.Now()
	for i, cur := range m.genValues(gens) {
		hard, s, ok := strings.Cut(cur, ":")
		softN, _ := strconv.ParseInt(s, 10, 64)
		if !soft || !ok {
			old, _ := strconv.ParseInt(hard, 10, 64)
			h := max(now.UnixMicro(), old+1, m.last+1)
			m.last = h
			hard = strconv.FormatInt(h, 10)
		}
		if soft {
			softN++
		}
		_ = m.set(ctx, gens[i], []byte(hard+":"+strconv.FormatInt(softN, 10)), ttl)
	}
	return nil
}

func (m *memoryStore) rememberPurge(_ context.Context, _ string, glob string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := time.Now()
	keep := m.purged[:0]
	for _, p := range m.purged {
		if now.Sub(p.at) < purgeMemory {
			keep = append(keep, p)
		}
	}
	m.purged = append(keep, memPurge{glob: glob, at: now})
	if over := len(m.purged) - purgeMemoryLimit; over > 0 {
		m.purged = append(m.purged[:0], m.purged[over:]...)
	}
	return nil
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
	if len(m.locks) >= 4096 {
		for k, l := range m.locks {
			if now.After(l.expires) {
				delete(m.locks, k)
			}
		}
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

func (m *memoryStore) extendLock(_ context.Context, key, token string, ttl time.Duration) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if l, ok := m.locks[key]; ok && l.token == token {
		m.locks[key] = memLock{token: token, expires: time.Now().Add(ttl)}
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

package rediscache

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// localTier is the optional in-process tier in front of Redis: decoded
// entries for hot keys, and recently read generation values so that a hit
// needs no round trip. It stays coherent with purges on every instance:
// each purge is published on purgeChannel, and every instance drops the
// generations it names (or its whole tier, for key and pattern purges).
// A generation value, and an entry, are trusted for at most maxAge after
// they were read from the store, which bounds staleness should a purge
// message be lost.
type localTier struct {
	entries *boundedLRU[*entry]
	maxAge  time.Duration

	gensMu sync.RWMutex
	gens   map[string]localGen
	epoch  uint64 // advances on every purge message, see observeGens
}

type localGen struct {
	val  string
	read time.Time
}

// purgeChannel carries purge notices between instances: "g <key>..." for
// generation bumps, "clear" for deletions by key or pattern.
const purgeChannel = "redis_cache:purge"

// localGenMaxAge bounds how long a generation read from Redis is trusted
// without a fresh read, should a purge notice be lost.
const localGenMaxAge = time.Second

func newLocalTier(limit int64) *localTier {
	return &localTier{
		entries: newEntryLRU[*entry](limit),
		maxAge:  localGenMaxAge,
		gens:    make(map[string]localGen),
	}
}

// get returns a locally held entry whose generations are all known to be
// unchanged, following a Vary index to the request's variant.
func (lt *localTier) get(primary string, variant func(*entry) string) *entry {
	e := lt.entry(primary)
	if e != nil && e.kind == kindVaryIndex {
		e = lt.entry(variant(e))
	}
	if e == nil || e.kind != kindResponse || !lt.gensCurrent(e) {
		return nil
	}
	return e
}

func (lt *localTier) entry(key string) *entry {
	e, _ := lt.entries.get(key)
	return e
}

func (lt *localTier) gensCurrent(e *entry) bool {
	now := time.Now()
	lt.gensMu.RLock()
	defer lt.gensMu.RUnlock()
	for _, g := range e.gens {
		cur, ok := lt.gens[g.key]
		if !ok || now.Sub(cur.read) > lt.maxAge || cur.val != g.val {
			return false
		}
	}
	return true
}

// put keeps an entry until ttl passes or it is evicted, and for no longer
// than maxAge: an entry deleted from the store by a key or pattern purge
// whose notice was lost has no generation to betray it, so it must be
// read from the store again at least that often.
func (lt *localTier) put(key string, e *entry, ttl time.Duration) {
	if ttl <= 0 {
		return
	}
	lt.entries.put(key, e, entryMemSize(key, e), time.Now().Add(min(ttl, lt.maxAge)))
}

// readEpoch is taken before a store read whose generation values will be
// offered to observeGens.
func (lt *localTier) readEpoch() uint64 {
	lt.gensMu.RLock()
	defer lt.gensMu.RUnlock()
	return lt.epoch
}

// observeGens records generation values read from the store, unless a
// purge notice arrived since the read began: the values might predate it.
func (lt *localTier) observeGens(epoch uint64, keys, vals []string) {
	now := time.Now()
	lt.gensMu.Lock()
	defer lt.gensMu.Unlock()
	if epoch != lt.epoch {
		return
	}
	for i, k := range keys {
		if i < len(vals) {
			lt.gens[k] = localGen{val: vals[i], read: now}
		}
	}
	if len(lt.gens) > 65536 {
		for k, g := range lt.gens {
			if now.Sub(g.read) > lt.maxAge {
				delete(lt.gens, k)
			}
		}
	}
}

// forgetGens drops generations named by a purge.
func (lt *localTier) forgetGens(keys []string) {
	lt.gensMu.Lock()
	defer lt.gensMu.Unlock()
	lt.epoch++
	for _, k := range keys {
		delete(lt.gens, k)
	}
}

// clear drops every entry and generation, after a purge by key or pattern.
func (lt *localTier) clear() {
	lt.gensMu.Lock()
	lt.epoch++
	lt.gens = make(map[string]localGen)
	lt.gensMu.Unlock()
	lt.entries.clear()
}

// handleNotice applies a purge notice from any instance, this one included.
func (lt *localTier) handleNotice(msg string) {
	if msg == "clear" {
		lt.clear()
		return
	}
	if rest, ok := strings.CutPrefix(msg, "g "); ok {
		lt.forgetGens(strings.Fields(rest))
		return
	}
	lt.clear() // an unknown notice: be safe
}

// listen follows purge notices until ctx ends. Whenever the subscription
// is (re)established, after a Redis restart say, the tier is cleared, since
// notices may have been missed while it was down.
func (lt *localTier) listen(ctx context.Context, client redis.UniversalClient) {
	sub := client.Subscribe(ctx, purgeChannel)
	stop := context.AfterFunc(ctx, func() { _ = sub.Close() })
	defer stop()
	for msg := range sub.ChannelWithSubscriptions(redis.WithChannelHealthCheckInterval(time.Second)) {
		switch m := msg.(type) {
		case *redis.Subscription:
			lt.clear()
		case *redis.Message:
			lt.handleNotice(m.Payload)
		}
	}
}

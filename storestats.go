package rediscache

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/redis/go-redis/v9"
)

// Store statistics for /redis_cache/stats: operations sent to Redis
// (hosted Redis such as Upstash bills per command) and the number of entries
// per namespace.

// opCounter counts the operations the store layer sends to Redis: each is
// one command, script or pipelined lookup (an entry with its generations)
// of one request. A go-redis hook would count every command, but a client
// with hooks takes slower paths in go-redis, which showed as timeouts.
type opCounter struct{ n atomic.Int64 }

// countOps returns an operation counter for a Redis backend, nil for a
// store that sends nothing over the network.
func countOps(backend store) *opCounter {
	if _, ok := backend.(*redisStore); !ok {
		return nil
	}
	return new(opCounter)
}

// keyCountSamples is how many random keys estimate a namespace's share.
const keyCountSamples = 64

// keyCount returns the number of entry keys of a namespace: exact for the
// memory store; for Redis an estimate, DBSIZE times the share of entry keys
// of the namespace among RANDOMKEY samples, summed over every master.
func (h *Handler) keyCount(ctx context.Context) (n int64, exact bool, err error) {
	switch b := h.store.backend.(type) {
	case *memoryStore:
		b.items.mu.Lock()
		defer b.items.mu.Unlock()
		for k := range b.items.items {
			if h.isEntryKey(k) {
				n++
			}
		}
		return n, true, nil
	case *redisStore:
		var mu sync.Mutex
		one := func(ctx context.Context, c *redis.Client) error {
			pipe := c.Pipeline()
			size := pipe.DBSize(ctx)
			keys := make([]*redis.StringCmd, keyCountSamples)
			for i := range keys {
				keys[i] = pipe.RandomKey(ctx)
			}
			if _, err := pipe.Exec(ctx); err != nil && err != redis.Nil {
				return err
			}
			hits, samples := 0, 0
			for _, k := range keys {
				if k.Err() == nil {
					samples++
					if h.isEntryKey(k.Val()) {
						hits++
					}
				}
			}
			if samples > 0 {
				mu.Lock()
				n += size.Val() * int64(hits) / int64(samples)
				mu.Unlock()
			}
			return nil
		}
		switch c := b.client.(type) {
		case *redis.ClusterClient:
			err = c.ForEachMaster(ctx, one)
		case *redis.Client:
			err = one(ctx, c)
		}
		return n, false, err
	}
	return 0, false, nil
}

// countRequest counts a request served through this store's handlers.
func (g *guardedStore) countRequest() {
	if g != nil {
		g.requests.Add(1)
	}
}

// countOp counts one operation sent to the store.
func (g *guardedStore) countOp() {
	if g.ops != nil {
		g.ops.n.Add(1)
	}
}

// opStats is the stats block on Redis operations.
func (g *guardedStore) opStats() map[string]any {
	if g.ops == nil {
		return nil
	}
	ops, reqs := g.ops.n.Load(), g.requests.Load()
	out := map[string]any{"operations": ops, "requests": reqs}
	if reqs > 0 {
		out["operations_per_request"] = float64(ops) / float64(reqs)
	}
	return out
}

// stats is the in-flight body budget's use, for /redis_cache/stats.
func (b *inflightBudget) stats() map[string]any {
	if b == nil {
		return nil
	}
	return map[string]any{"used": b.inUse(), "limit": b.limit}
}

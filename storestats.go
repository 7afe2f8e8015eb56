package rediscache

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/redis/go-redis/v9"
)

// Store statistics for /redis_cache/stats: commands sent to Redis (hosted
// Redis such as Upstash bills per command) and the number of entries per
// namespace.

// commandCounter is a go-redis hook counting every command sent, those in
// pipelines and transactions included.
type commandCounter struct{ n atomic.Int64 }

func (c *commandCounter) DialHook(next redis.DialHook) redis.DialHook { return next }

func (c *commandCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c.n.Add(1)
		return next(ctx, cmd)
	}
}

func (c *commandCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.n.Add(int64(len(cmds)))
		return next(ctx, cmds)
	}
}

var _ redis.Hook = (*commandCounter)(nil)

// countCommands installs a command counter on a Redis backend; it returns
// nil for a store that sends no commands.
func countCommands(backend store) *commandCounter {
	rs, ok := backend.(*redisStore)
	if !ok {
		return nil
	}
	c := new(commandCounter)
	rs.client.AddHook(c)
	return c
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

// commandStats is the stats block on Redis commands.
func (g *guardedStore) commandStats() map[string]any {
	if g.commands == nil {
		return nil
	}
	cmds, reqs := g.commands.n.Load(), g.requests.Load()
	out := map[string]any{"commands": cmds, "requests": reqs}
	if reqs > 0 {
		out["commands_per_request"] = float64(cmds) / float64(reqs)
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

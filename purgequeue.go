package rediscache

import (
	"context"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// pendingPurges holds the generation bumps of purges this Caddy has
// acknowledged (a mutation's answer went out, an admin purge answered 202)
// but the store did not take: Redis stalled, was down or refused the
// write. They are retried until it takes them, and until then this
// instance serves none of the entries they cover.
type pendingPurges struct {
	limit int

	ttl atomic.Int64 // the longest generation TTL asked for, in ns

	mu   sync.Mutex
	gens map[string]pendingBump
	seq  uint64
	n    atomic.Int64 // len(gens), read without the lock on every hit
}

type pendingBump struct {
	soft bool
	seq  uint64 // to tell a bump queued again during a retry
}

// maxPendingPurges bounds the queue. Past it, a purge of the whole
// namespace is queued instead: safe, if costly.
const maxPendingPurges = 10000

// purgeRetryInterval is how often queued purges are retried.
const purgeRetryInterval = 100 * time.Millisecond

func newPendingPurges(limit int) *pendingPurges {
	return &pendingPurges{limit: limit, gens: make(map[string]pendingBump)}
}

// add queues bumps; when the queue is full, the namespace-wide generation
// overflow is queued in their place.
func (q *pendingPurges) add(gens []string, soft bool, ttl time.Duration, overflow string) {
	if int64(ttl) > q.ttl.Load() {
		q.ttl.Store(int64(ttl))
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, g := range gens {
		if _, queued := q.gens[g]; !queued && len(q.gens) >= q.limit {
			g, soft = overflow, false
		}
		q.seq++
		prev, queued := q.gens[g]
		q.gens[g] = pendingBump{soft: soft && (!queued || prev.soft), seq: q.seq}
	}
	q.n.Store(int64(len(q.gens)))
}

// covers reports whether a purge of the generation key is waiting.
func (q *pendingPurges) covers(key string) bool {
	if q == nil || q.n.Load() == 0 {
		return false
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	_, ok := q.gens[key]
	return ok
}

func (q *pendingPurges) coversAny(stamps []genStamp) bool {
	if q == nil || q.n.Load() == 0 {
		return false
	}
	for _, st := range stamps {
		if q.covers(st.key) {
			return true
		}
	}
	return false
}

func (q *pendingPurges) len() int {
	if q == nil {
		return 0
	}
	return int(q.n.Load())
}

// snapshot returns the queued bumps, hard and soft apart.
func (q *pendingPurges) snapshot() (hard, soft []string, seqs map[string]uint64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	seqs = make(map[string]uint64, len(q.gens))
	for g, b := range q.gens {
		seqs[g] = b.seq
		if b.soft {
			soft = append(soft, g)
		} else {
			hard = append(hard, g)
		}
	}
	return hard, soft, seqs
}

// applied drops the bumps the store took, unless they were queued again
// meanwhile.
func (q *pendingPurges) applied(seqs map[string]uint64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for g, seq := range seqs {
		if b, ok := q.gens[g]; ok && b.seq == seq {
			delete(q.gens, g)
		}
	}
	q.n.Store(int64(len(q.gens)))
}

// purge bumps generations, or queues them when the store does not take
// them: the caller may acknowledge the purge either way.
func (g *guardedStore) purge(ctx context.Context, soft bool, ttl time.Duration, overflow string, gens ...string) (queued bool) {
	err := g.bump(ctx, soft, ttl, gens...)
	if err == nil {
		return false
	}
	g.pending.add(gens, soft, ttl, overflow)
	g.metrics.purgesQueued.Add(float64(len(gens)))
	g.reportPending(err)
	return true
}

// reportPending logs and exports the queue's state when it changes between
// empty and not.
func (g *guardedStore) reportPending(err error) {
	n := g.pending.len()
	g.metrics.purgesPending.WithLabelValues(g.backend.kind()).Set(float64(n))
	was := g.pendingLogged.Swap(n > 0)
	switch {
	case n > 0 && !was:
		g.logger.Warn("purges queued: the store did not take them; retrying until it does, and not serving the entries they cover meanwhile",
			zap.String("store", g.backend.kind()), zap.Int("pending", n), zap.Error(err))
	case n == 0 && was:
		g.logger.Info("queued purges applied", zap.String("store", g.backend.kind()))
	}
}

// retryPending applies queued purges until ctx ends.
func (g *guardedStore) retryPending(ctx context.Context) {
	defer recoverAndLog(g.logger, "purge retry")
	tick := time.NewTicker(purgeRetryInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if g.pending.len() == 0 {
			continue
		}
		err := g.applyPending(ctx)
		g.reportPending(err)
	}
}

// applyPending tries the queued bumps once, straight on the backend: the
// breaker must not keep a purge from Redis once it answers again.
func (g *guardedStore) applyPending(ctx context.Context) error {
	hard, soft, seqs := g.pending.snapshot()
	tctx, cancel := context.WithTimeout(ctx, max(g.timeout, time.Second))
	defer cancel()
	for _, batch := range []struct {
		soft bool
		gens []string
	}{{false, hard}, {true, soft}} {
		if len(batch.gens) == 0 {
			continue
		}
		if err := g.backend.bump(tctx, batch.soft, time.Duration(g.pending.ttl.Load()), batch.gens...); err != nil {
			return err
		}
	}
	g.pending.applied(seqs)
	g.notify(ctx, "g "+strings.Join(slices.Concat(hard, soft), " "))
	return nil
}

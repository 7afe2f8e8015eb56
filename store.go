package rediscache

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// store is what the handler needs from a backend. Generations are counters
// ("hard:soft", see generations.go) that entries record when they are
// stored; bumping one invalidates every entry that recorded an older value,
// in one write. An absent generation reads as genMissing.
type store interface {
	// get returns the value at key (nil when absent) and the current value
	// of each generation key, in one round trip. When tail is set (the
	// entryTail of a value the caller holds decoded) and the value still
	// ends with it, get reports it unchanged instead of returning it; a
	// backend may also ignore tail.
	get(ctx context.Context, key string, gens []string, tail []byte) (val []byte, cur []string, unchanged bool, err error)
	// gens returns the current value of each generation key.
	gens(ctx context.Context, gens []string) ([]string, error)
	set(ctx context.Context, key string, value []byte, ttl time.Duration) error
	// setIf sets key only while the guard holds, creating the generations
	// it records as births, and reports what became of the write.
	setIf(ctx context.Context, key string, value []byte, ttl time.Duration, guard storeGuard) (storeOutcome, error)
	del(ctx context.Context, keys ...string) (int64, error)
	// bump advances generation keys: a hard bump invalidates, a soft bump
	// only marks stale. Each key lives for ttl after its last bump.
	bump(ctx context.Context, soft bool, ttl time.Duration, gens ...string) error
	// rememberPurge records a pattern (or exact key) purge under key, so
	// that guarded writes of answers in flight when it happened see it.
	rememberPurge(ctx context.Context, key, glob string) error
	// scanDelete removes the keys matching a glob for which keep is false,
	// in bounded batches, and reports how many it removed.
	scanDelete(ctx context.Context, match string, keep func(string) bool) (int64, error)
	// lock takes a short exclusive lock; unlock releases it if still ours.
	lock(ctx context.Context, key, token string, ttl time.Duration) (bool, error)
	unlock(ctx context.Context, key, token string) error
	// extendLock prolongs a lock that is still ours.
	extendLock(ctx context.Context, key, token string, ttl time.Duration) error
	info(ctx context.Context) map[string]any
	kind() string
	close() error
}

var errBreakerOpen = errors.New("store circuit breaker is open")

// storeOptions is everything that identifies one store connection.
type storeOptions struct {
	urls            []string
	username        string
	password        string
	sentinelMaster  string
	timeout         time.Duration
	breakerFailures int
	breakerCooldown time.Duration
	memoryLimit     int64
	localLimit      int64
	copiesLimit     int64
}

// guardedStore bounds every store call by a timeout and a circuit breaker,
// so a dead or slow store costs requests nothing but a SKIP.
type guardedStore struct {
	backend store
	timeout time.Duration
	breaker *breaker
	metrics *handlerMetrics

	local      *localTier            // nil unless local_cache is set and Redis is used
	copies     *boundedLRU[heldCopy] // validated copies; nil when off
	publisher  func(ctx context.Context, msg string) error
	stopListen context.CancelFunc

	logger        *zap.Logger
	pending       *pendingPurges
	pendingLogged atomic.Bool
	stopRetry     context.CancelFunc
	namespaces    *sync.Map // namespace -> generation TTL; shared with a Redis backend
	probe         *healthProbe
	ops           *opCounter   // operations sent to Redis, since the store was created
	requests      atomic.Int64 // requests through the cache, since the store was created
}

func newGuardedStore(opts storeOptions, logger *zap.Logger, metrics *handlerMetrics) (*guardedStore, error) {
	var backend store
	var rs *redisStore
	if len(opts.urls) == 0 {
		backend = newMemoryStore(opts.memoryLimit)
	} else {
		var err error
		if rs, err = newRedisStore(opts); err != nil {
			return nil, err
		}
		backend = rs
	}
	g := &guardedStore{
		backend: backend,
		timeout: opts.timeout,
		metrics: metrics,
		logger:  logger,
		pending: newPendingPurges(maxPendingPurges),
	}
	if rs != nil {
		g.namespaces = rs.namespaces
	} else {
		g.namespaces = new(sync.Map)
	}
	retryCtx, stopRetry := context.WithCancel(context.Background())
	g.stopRetry = stopRetry
	go g.retryPending(retryCtx)
	if opts.copiesLimit > 0 {
		g.copies = newEntryLRU[heldCopy](opts.copiesLimit)
	}
	if rs != nil && opts.localLimit > 0 {
		g.local = newLocalTier(opts.localLimit)
		g.publisher = rs.publish
		ctx, cancel := context.WithCancel(context.Background())
		g.stopListen = cancel
		goSafe(logger, "purge notices", func() { g.local.listen(ctx, rs.client) })
	}
	g.breaker = newBreaker(opts.breakerFailures, opts.breakerCooldown, func(open bool, err error) {
		metrics.setBreaker(backend.kind(), open)
		if open {
			logger.Warn("cache store unavailable; requests go straight to the upstream",
				zap.String("store", backend.kind()), zap.Error(err))
		} else {
			logger.Warn("cache store available again; caching resumed", zap.String("store", backend.kind()))
		}
	})
	metrics.setBreaker(backend.kind(), false)
	g.probe = newHealthProbe(redisPing(backend), opts.timeout, logger)
	g.ops = countOps(backend)
	return g, nil
}

// serveNamespace records a namespace that uses the store, so that a Redis
// restart found on reconnect invalidates it (see checkRestart).
func (g *guardedStore) serveNamespace(ns string, genTTL time.Duration) {
	g.namespaces.Store(ns, genTTL)
}

// Destruct closes the backend when no config uses it any more.
func (g *guardedStore) Destruct() error {
	g.stopRetry()
	g.probe.close()
	if g.stopListen != nil {
		g.stopListen()
	}
	return g.backend.close()
}

// notify applies a purge notice to this instance's local tier at once and
// publishes it to the other instances.
func (g *guardedStore) notify(ctx context.Context, msg string) {
	if g.local == nil {
		return
	}
	g.local.handleNotice(msg)
	_ = g.call(ctx, "publish", func(ctx context.Context) error { return g.publisher(ctx, msg) })
}

// call runs op under the breaker and the timeout.
func (g *guardedStore) call(ctx context.Context, name string, op func(context.Context) error) error {
	if !g.breaker.allow() {
		return errBreakerOpen
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), g.timeout)
	defer cancel()
	g.countOp()
	start := time.Now()
	err := op(ctx)
	g.metrics.observeStore(name, time.Since(start), err)
	g.breaker.record(err)
	return err
}

func (g *guardedStore) get(ctx context.Context, key string, gens []string, tail []byte) (val []byte, cur []string, unchanged bool, err error) {
	err = g.call(ctx, "get", func(ctx context.Context) error {
		val, cur, unchanged, err = g.backend.get(ctx, key, gens, tail)
		return err
	})
	return val, cur, unchanged, err
}

func (g *guardedStore) gens(ctx context.Context, gens []string) (cur []string, err error) {
	err = g.call(ctx, "gens", func(ctx context.Context) error {
		cur, err = g.backend.gens(ctx, gens)
		return err
	})
	return cur, err
}

func (g *guardedStore) set(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	return g.call(ctx, "set", func(ctx context.Context) error {
		return g.backend.set(ctx, key, value, ttl)
	})
}

func (g *guardedStore) setIf(ctx context.Context, key string, value []byte, ttl time.Duration, guard storeGuard) (out storeOutcome, err error) {
	err = g.call(ctx, "set", func(ctx context.Context) error {
		out, err = g.backend.setIf(ctx, key, value, ttl, guard)
		return err
	})
	return out, err
}

func (g *guardedStore) rememberPurge(ctx context.Context, key, glob string) error {
	return g.call(ctx, "remember", func(ctx context.Context) error {
		return g.backend.rememberPurge(ctx, key, glob)
	})
}

func (g *guardedStore) extendLock(ctx context.Context, key, token string, ttl time.Duration) error {
	return g.call(ctx, "lock", func(ctx context.Context) error {
		return g.backend.extendLock(ctx, key, token, ttl)
	})
}

func (g *guardedStore) del(ctx context.Context, keys ...string) (n int64, err error) {
	err = g.call(ctx, "del", func(ctx context.Context) error {
		n, err = g.backend.del(ctx, keys...)
		return err
	})
	if err == nil {
		g.notify(ctx, "clear")
	}
	return n, err
}

func (g *guardedStore) bump(ctx context.Context, soft bool, ttl time.Duration, gens ...string) error {
	err := g.call(ctx, "bump", func(ctx context.Context) error {
		return g.backend.bump(ctx, soft, ttl, gens...)
	})
	if err == nil {
		g.notify(ctx, "g "+strings.Join(gens, " "))
	}
	return err
}

// scanDelete is not bounded by the per-request timeout: a pattern purge of a
// million keys takes seconds, and it is run by an operator, not a client.
func (g *guardedStore) scanDelete(ctx context.Context, match string, keep func(string) bool) (int64, error) {
	if !g.breaker.allow() {
		return 0, errBreakerOpen
	}
	n, err := g.backend.scanDelete(ctx, match, keep)
	g.breaker.record(err)
	g.notify(ctx, "clear")
	return n, err
}

func (g *guardedStore) lock(ctx context.Context, key, token string, ttl time.Duration) (ok bool, err error) {
	err = g.call(ctx, "lock", func(ctx context.Context) error {
		ok, err = g.backend.lock(ctx, key, token, ttl)
		return err
	})
	return ok, err
}

func (g *guardedStore) unlock(ctx context.Context, key, token string) error {
	return g.call(ctx, "unlock", func(ctx context.Context) error {
		return g.backend.unlock(ctx, key, token)
	})
}

// breaker is a consecutive-failure circuit breaker. While open, calls fail
// at once; after the cooldown one probe is let through, and its outcome
// closes or re-opens the breaker.
type breaker struct {
	threshold int
	cooldown  time.Duration
	onChange  func(open bool, err error)

	mu        sync.Mutex
	failures  int
	open      bool
	openUntil time.Time
	probing   bool
	isOpen    atomic.Bool
}

func newBreaker(threshold int, cooldown time.Duration, onChange func(bool, error)) *breaker {
	return &breaker{threshold: threshold, cooldown: cooldown, onChange: onChange}
}

func (b *breaker) allow() bool {
	if !b.isOpen.Load() {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.open {
		return true
	}
	if b.probing || time.Now().Before(b.openUntil) {
		return false
	}
	b.probing = true
	return true
}

func (b *breaker) record(err error) {
	// A reply error (OOM under noeviction, a script error) means the store
	// is up and answering; only failures to reach it count.
	if errors.Is(err, context.Canceled) || errors.Is(err, errBreakerOpen) || isClosedError(err) || isPoolWait(err) {
		// Says nothing about the store; a probe that ended this way
		// leaves room for the next one.
		if b.isOpen.Load() {
			b.mu.Lock()
			b.probing = false
			b.mu.Unlock()
		}
		return
	}
	failed := err != nil && !isReplyError(err)
	if !failed && !b.isOpen.Load() {
		b.mu.Lock()
		b.failures = 0
		b.mu.Unlock()
		return
	}
	b.mu.Lock()
	var changed, nowOpen bool
	if failed {
		b.failures++
		if b.open {
			b.openUntil = time.Now().Add(b.cooldown)
			b.probing = false
		} else if b.failures >= b.threshold {
			b.open, changed, nowOpen = true, true, true
			b.openUntil = time.Now().Add(b.cooldown)
			b.isOpen.Store(true)
		}
	} else if b.open {
		b.open, b.probing, b.failures, changed = false, false, 0, true
		b.isOpen.Store(false)
	}
	b.mu.Unlock()
	if changed {
		b.onChange(nowOpen, err)
	}
}

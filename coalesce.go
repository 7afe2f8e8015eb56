package rediscache

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// flightGroup lets one request per key go to the upstream while concurrent
// requests for the same key wait for its answer.
type flightGroup struct {
	mu sync.Mutex
	m  map[string]*flight
}

type flight struct {
	done    chan struct{}
	res     *fetched // nil when the answer could not be shared
	waiters atomic.Int32
}

func newFlightGroup() *flightGroup {
	return &flightGroup{m: make(map[string]*flight)}
}

// join returns the flight for key and whether the caller leads it. The
// leader must call finish.
func (g *flightGroup) join(key string) (*flight, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if f, ok := g.m[key]; ok {
		f.waiters.Add(1)
		return f, false
	}
	f := &flight{done: make(chan struct{})}
	g.m[key] = f
	return f, true
}

// finish publishes the leader's result and releases every waiter at once.
func (g *flightGroup) finish(key string, f *flight, res *fetched) {
	g.mu.Lock()
	if g.m[key] == f {
		delete(g.m, key)
	}
	g.mu.Unlock()
	f.res = res
	close(f.done)
}

// wait blocks until the leader finishes, the client goes away or the
// limit passes; only the first case can yield a result. The leader's
// upstream request outlives its own client while others wait for it (see
// detach), so a waiter has no reason to give up earlier.
func (f *flight) wait(ctx context.Context, limit time.Duration) *fetched {
	defer f.waiters.Add(-1)
	timer := time.NewTimer(limit)
	defer timer.Stop()
	select {
	case <-f.done:
		return f.res
	case <-ctx.Done():
		return nil
	case <-timer.C:
		return nil
	}
}

// detach makes the leader's upstream request independent of its client:
// should the client go away while others wait for the answer, the request
// goes on for up to fetch_timeout, instead of being cancelled and leaving
// every waiter to go upstream by itself. With nobody waiting it ends with
// its client, as before. A config reload does not end it: Caddy lets
// requests in flight finish. The returned function must be called when the
// upstream request is over.
func (cr *cacheRequest) detach(f *flight) (done func()) {
	h := cr.h
	client := cr.r.Context()
	ctx, cancel := context.WithCancel(context.WithoutCancel(client))
	over := make(chan struct{})
	stopClient := context.AfterFunc(client, func() {
		if f.waiters.Load() == 0 {
			cancel()
			return
		}
		grace := time.NewTimer(time.Duration(h.FetchTimeout))
		defer grace.Stop()
		select {
		case <-grace.C:
			cancel()
		case <-over:
		}
	})
	orig := cr.r
	cr.r = cr.r.WithContext(ctx)
	return func() {
		close(over)
		stopClient()
		cancel()
		cr.r = orig
	}
}

// fetch goes to the upstream, coalescing concurrent misses for the same
// key into one upstream request.
func (cr *cacheRequest) fetch(w http.ResponseWriter, fwd string) error {
	h := cr.h
	// Only requests that read the same generations share a fetch: one that
	// looked up after a purge must not get an answer the upstream began
	// producing before it.
	flightKey := cr.key.primary + "\x00" + strings.Join(cr.cur, ",")
	f, leader := h.flights.join(flightKey)
	if !leader {
		if res := f.wait(cr.r.Context(), time.Duration(h.FetchTimeout)); res != nil && res.sharableWith(cr.r) {
			return cr.serveFetched(w, res, "fwd="+fwd+"; collapsed")
		}
		// The leader's answer was not shareable; go ourselves, without
		// coalescing again.
		return cr.fetchDirect(w, fwd, nil)
	}
	var shared *fetched
	defer func() { h.flights.finish(flightKey, f, shared) }()
	defer cr.detach(f)()
	if h.Coalesce {
		release, e := cr.coalesceAcrossInstances()
		if e != nil {
			shared = newFetched(e, 0, cr.r) // local waiters share it
			return cr.serveEntry(w, e, resultMiss, "fwd="+fwd+"; collapsed")
		}
		if release != nil {
			defer release()
		}
	}
	return cr.fetchDirect(w, fwd, &shared)
}

// coalesceAcrossInstances makes one Caddy among all those sharing the store
// fetch a cold key. It either takes the key's lock (and returns its
// release) or waits for the lock holder's entry, which it returns. The
// holder keeps its lock alive while its upstream answers, however slowly;
// when it lets go without an entry (its answer was not storable, or it
// died), a waiter takes the lock over. Without the store, or once the
// request's context ends (the client's, unless others wait on this
// request: see detach), the caller fetches by itself.
func (cr *cacheRequest) coalesceAcrossInstances() (release func(), e *entry) {
	h := cr.h
	ctx := cr.r.Context()
	lockKey := h.lockKey(cr.key.primary)
	token := randomToken()
	ttl := time.Duration(h.CoalesceWait)
	deadline := time.Now().Add(time.Duration(h.FetchTimeout))
	tick := time.NewTicker(coalescePoll)
	defer tick.Stop()
	// The lookup just succeeded, so a failure now is most likely a burst
	// on this Caddy, not Redis gone: a few are retried before the request
	// fetches by itself.
	failures := 0
	for time.Now().Before(deadline) && failures < coalesceRetries {
		ok, err := h.store.lock(ctx, lockKey, token, ttl)
		if err != nil {
			failures++
			if !sleepCtx(ctx, coalescePoll) {
				return nil, nil
			}
			continue
		}
		if ok {
			return cr.holdLock(lockKey, token, ttl), nil
		}
		found, err := cr.awaitHolder(ctx, tick, lockKey)
		switch {
		case found != nil:
			return nil, found
		case errors.Is(err, context.Canceled) || ctx.Err() != nil:
			return nil, nil
		case err != nil:
			failures++
		}
	}
	return nil, nil
}

// coalesceRetries is how many store failures a request waiting for another
// instance's fetch tolerates before it fetches by itself.
const coalesceRetries = 5

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// awaitHolder polls for the lock holder's entry until the lock is gone.
func (cr *cacheRequest) awaitHolder(ctx context.Context, tick *time.Ticker, lockKey string) (*entry, error) {
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-tick.C:
		}
		// The lock first: read after it, the entry of a holder that just
		// stored and released is seen. The lock's value reads like a
		// generation: genMissing when absent.
		held, err := cr.h.store.gens(ctx, []string{lockKey})
		if err != nil {
			return nil, err
		}
		found, _, err := cr.lookup()
		if err != nil {
			return nil, err
		}
		if found != nil && found.age(time.Now()) < found.freshFor && !found.noCache {
			return found, nil
		}
		if held[0] == genMissing {
			return nil, nil
		}
	}
}

// holdLock keeps a coalescing lock alive until the returned release is
// called, so that other instances go on waiting for a slow upstream
// instead of fetching too.
func (cr *cacheRequest) holdLock(lockKey, token string, ttl time.Duration) (release func()) {
	h := cr.h
	ctx := context.WithoutCancel(cr.r.Context())
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer recoverAndLog(h.logger, "coalescing lock")
		tick := time.NewTicker(max(ttl/3, coalescePoll))
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				_ = h.store.extendLock(ctx, lockKey, token, ttl)
			}
		}
	}()
	return func() {
		close(stop)
		wg.Wait()
		_ = h.store.unlock(ctx, lockKey, token)
	}
}

// coalescePoll is how often an instance waiting for another instance's
// upstream request checks the store.
const coalescePoll = 20 * time.Millisecond

package rediscache

import (
	"context"
	"sync"
	"time"
)

// flightGroup lets one request per key go to the upstream while concurrent
// requests for the same key wait for its answer.
type flightGroup struct {
	mu sync.Mutex
	m  map[string]*flight
}

type flight struct {
	done chan struct{}
	res  *fetched // nil when the answer could not be shared
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
// timeout passes; only the first case can yield a result.
func (f *flight) wait(ctx context.Context, timeout time.Duration) *fetched {
	timer := time.NewTimer(timeout)
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

package rediscache

import "time"

// requestDirectives is what the client's Cache-Control asks of the cache.
// Unless the handler honours request directives, only only-if-cached is
// obeyed, so clients cannot force traffic onto the origin.
type requestDirectives struct {
	forceMiss    bool          // no-cache, or max-age=0: go to the origin
	maxAge       time.Duration // -1: none
	minFresh     time.Duration
	maxStale     time.Duration // -1: none; serve stale up to this long
	onlyIfCached bool
	noStore      bool // the answer must not be stored (§5.2.1.5)
}

func (cr *cacheRequest) requestDirectives() requestDirectives {
	d := requestDirectives{maxAge: -1, maxStale: -1}
	values := cr.r.Header.Values("Cache-Control")
	if len(values) == 0 {
		return d
	}
	cc := parseCacheControl(values)
	d.onlyIfCached = cc.has("only-if-cached")
	if !cr.h.honorRequestCC {
		return d
	}
	if v, ok := cc.get("max-age"); ok {
		d.maxAge = parseSeconds(v)
	}
	d.forceMiss = cc.has("no-cache") || d.maxAge == 0
	d.noStore = cc.has("no-store")
	d.minFresh = cc.seconds("min-fresh")
	if v, ok := cc.get("max-stale"); ok {
		if v == "" {
			d.maxStale = time.Duration(1<<31-1) * time.Second
		} else {
			d.maxStale = parseSeconds(v)
		}
	}
	return d
}

// acceptsFresh reports whether e may be served as a hit.
func (d requestDirectives) acceptsFresh(e *entry, now time.Time) bool {
	age := e.age(now)
	if e.noCache || age >= e.freshFor {
		return false
	}
	if d.maxAge >= 0 && age > d.maxAge {
		return false
	}
	return d.minFresh <= 0 || e.freshFor-age >= d.minFresh
}

// acceptsStale reports whether the client's max-stale lets a stale e be
// served without revalidation.
func (d requestDirectives) acceptsStale(e *entry, now time.Time) bool {
	if d.maxStale < 0 || e.staleForbidden() {
		return false
	}
	return e.age(now)-e.freshFor <= d.maxStale
}

// staleWindow is how long past its freshness the stale entry may stand in
// for a failed upstream: its stale-if-error or, when the origin could not
// be reached at all (err is set), up to stale_if_unreachable (RFC 9111
// §4.2.4), unless the origin forbade serving it stale or it is an error.
func (cr *cacheRequest) staleWindow(err error) time.Duration {
	e := cr.stale
	if err == nil || e.staleForbidden() {
		return e.sie
	}
	return max(e.sie, time.Duration(cr.h.StaleIfUnreachable))
}

// staleForbidden reports whether e may never be served stale on the
// cache's own account: the origin said so, or it is an error.
func (e *entry) staleForbidden() bool {
	return e.noCache || e.mustRevalidate() || isErrorStatus(e.status)
}

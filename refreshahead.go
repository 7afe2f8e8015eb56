package rediscache

import (
	"math/rand/v2"
	"time"
)

// Refresh ahead of expiry: a hit on an entry in the last part of its
// freshness (the refresh window) starts, with a probability that grows from
// 0 at the start of the window to 1 at expiry, one background refresh
// through refreshInBackground (deduplicated per key). A hot entry is thus
// refreshed shortly before it expires and never turns into a burst of
// misses, while a rarely read entry is seldom refreshed for nothing.

// defaultRefreshShare is the default window, as a share of the freshness
// (the window also covers twice the route's recent upstream time).
const defaultRefreshShare = 10

// refreshWindow is how long before expiry an entry may be refreshed ahead,
// or 0 when the route does not refresh ahead.
func (rt *Route) refreshWindow(e *entry) time.Duration {
	switch {
	case rt.RefreshAhead < 0, e.noCache, e.freshFor <= 0:
		return 0
	case rt.RefreshAhead > 0:
		return min(time.Duration(rt.RefreshAhead), e.freshFor)
	case rt.StaleWhileRevalidate > 0 || e.swr > 0:
		return 0 // stale-while-revalidate already refreshes in the background
	}
	// Early enough for the upstream to answer before the entry expires:
	// a share of the freshness, but at least twice the route's recent
	// upstream time, and never more than half the freshness.
	return min(max(e.freshFor/defaultRefreshShare, 2*rt.fetchTime()), e.freshFor/2)
}

// observeFetch folds one upstream fetch time into the route's moving
// average (weight 1/8), which sizes the default refresh window.
func (rt *Route) observeFetch(d time.Duration) {
	old := rt.fetchEWMA.Load()
	if old == 0 {
		rt.fetchEWMA.Store(int64(d))
		return
	}
	rt.fetchEWMA.Store(old + (int64(d)-old)/8)
}

func (rt *Route) fetchTime() time.Duration { return time.Duration(rt.fetchEWMA.Load()) }

// maybeRefreshAhead starts a background refresh of a fresh entry served as
// a hit, when the draw says so.
func (cr *cacheRequest) maybeRefreshAhead(e *entry, now time.Time) {
	if cr.background {
		return
	}
	window := cr.route.refreshWindow(e)
	remaining := e.freshFor - e.age(now)
	if window <= 0 || remaining <= 0 || remaining > window {
		return
	}
	if rand.Float64() >= 1-float64(remaining)/float64(window) {
		return
	}
	cr.stale = e // its validators let the origin answer 304
	cr.refreshInBackground()
}

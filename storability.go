package rediscache

import (
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Whether, and for how long, an upstream answer may be stored: the
// route's rules on top of the RFC 9111 rules in rfc9111.go.

// storePlan is the freshness information of a storable response.
type storePlan struct {
	responseTime time.Time
	initialAge   time.Duration
	freshFor     time.Duration
	swr, sie     time.Duration
	noCache      bool // stored only to be revalidated before each use
	storeTTL     time.Duration
}

// revalidationWindow is how long a response with a validator is kept past
// its freshness, so that it can be revalidated with a conditional request
// instead of fetched again in full.
const revalidationWindow = 10 * time.Minute

// cacheability decides whether a response may be stored and for how long,
// naming the reason (a Cache-Status detail) when it may not.
func (h *Handler) cacheability(cr *cacheRequest, status int, hdr http.Header, requestTime time.Time) (storePlan, string) {
	rt := cr.route
	if isEventStream(hdr) || hasHeader(hdr, "Incremental") {
		return storePlan{}, "streaming"
	}
	if cr.reqCC.noStore {
		return storePlan{}, "request-no-store"
	}
	if cl := hdr.Get("Content-Length"); cl != "" {
		if n, err := strconv.ParseInt(cl, 10, 64); err == nil && n > h.MaxEntrySize {
			return storePlan{}, "too-large"
		}
	}
	now := time.Now()
	if isErrorStatus(status) && cr.stale != nil && cr.withinStale(cr.stale, cr.stale.age(now), cr.stale.sie) {
		// stale-if-error: the stale entry stands in for the error, which
		// is not stored over it even when the origin made it fresh.
		return storePlan{}, "upstream-error"
	}
	cc, targeted := responseDirectives(hdr, h.TargetedCacheControl)
	freshFor, reason := h.freshness(rt, status, cc, targeted, hdr, now)
	if reason != "" {
		return storePlan{}, reason
	}
	mustUnderstand := cc.has("must-understand") // status understood, checked above
	switch {
	case cc.has("no-store") && !mustUnderstand:
		// §5.2.2.3: a cache that understands the status ignores no-store
		// when must-understand is present.
		return storePlan{}, "no-store"
	case cc.has("private"):
		return storePlan{}, "private"
	case hasHeader(hdr, "Set-Cookie"):
		return storePlan{}, "set-cookie"
	case cr.authenticated() && !cc.has("public") && !cc.has("s-maxage") && !cc.has("must-revalidate"):
		// RFC 9111 §3.5: a shared cache stores answers to requests with
		// Authorization only when the origin explicitly allows it.
		return storePlan{}, "authorization"
	}
	for _, name := range varyNames(hdr) {
		if name == "*" {
			return storePlan{}, "vary-star"
		}
	}
	if len(rt.ContentTypes) > 0 && !rt.allowsContentTypes(hdr.Values("Content-Type")) {
		return storePlan{}, "content-type"
	}
	plan := storePlan{responseTime: now, freshFor: freshFor}
	plan.initialAge = initialAge(hdr, requestTime, now)
	plan.swr = max(time.Duration(rt.StaleWhileRevalidate), cc.seconds("stale-while-revalidate"))
	plan.sie = max(time.Duration(rt.StaleIfError), cc.seconds("stale-if-error"))
	if cc.has("must-revalidate") || cc.has("proxy-revalidate") || (cc.has("s-maxage") && !rt.ForceTTL) || isErrorStatus(status) {
		// s-maxage implies proxy-revalidate for a shared cache
		// (§5.2.2.10); a stale error is never worth serving.
		plan.swr, plan.sie = 0, 0
	}
	plan.noCache = cc.has("no-cache") && !rt.ForceTTL
	keepFor := max(plan.swr, plan.sie)
	switch {
	case hdr.Get("ETag") != "" || hdr.Get("Last-Modified") != "":
		// Kept past its freshness, to be revalidated rather than refetched.
		keepFor = max(keepFor, revalidationWindow)
	case plan.noCache:
		return storePlan{}, "no-cache"
	case plan.freshFor-plan.initialAge <= 0:
		return storePlan{}, "not-fresh"
	}
	plan.storeTTL = max(plan.freshFor-plan.initialAge, 0) + keepFor
	plan.storeTTL = min(plan.storeTTL, time.Duration(h.MaxTTL))
	// Store whatever is still fresh for at least Redis's expiry resolution:
	// Date's one-second granularity makes a ttl of 1s or max-age=1 arrive
	// with less than a second left.
	if plan.storeTTL < time.Millisecond {
		return storePlan{}, "stale-on-arrival"
	}
	return plan, ""
}

// freshness is a response's freshness lifetime in this cache, or why its
// status keeps it out. The origin's explicit freshness makes any final
// status storable (RFC 9111 §3; with must-understand, only one the cache
// understands), an unlisted 4xx or 5xx only
// when it is s-maxage or a targeted field; the configured status list
// only says which statuses get the route's ttl or a heuristic lifetime
// (§4.2.2) when the origin gives none. A route's ttl never applies to an
// error, even when forced.
func (h *Handler) freshness(rt *Route, status int, cc cacheControl, targeted bool, hdr http.Header, now time.Time) (time.Duration, string) {
	listed := h.cacheable[status] // an operator's list extends what is understood
	switch {
	case !listed && !storableStatus(status):
		return 0, "status"
	case cc.has("must-understand") && !listed && !understoodStatus(status):
		return 0, "must-understand"
	}
	date, ok := parseHTTPDate(hdr.Get("Date"))
	if !ok {
		date = now
	}
	expires := hdr.Values("Expires")
	if targeted {
		expires = nil // RFC 9213 §2.2
	}
	lifetime, explicit := explicitFreshness(cc, expires, date)
	switch {
	case rt.ForceTTL && !isErrorStatus(status) && listed:
		return time.Duration(rt.TTL), ""
	case explicit && !listed && status >= 400 && !cc.has("s-maxage") && !targeted:
		// An unlisted error needs freshness meant for shared caches: a
		// framework's blanket max-age on an error that an odd, unkeyed
		// request header provoked must not poison the entry (CPDoS).
		return 0, "status"
	case explicit:
		return lifetime, ""
	case !listed:
		return 0, "status"
	case rt.TTL > 0 && !isErrorStatus(status):
		return time.Duration(rt.TTL), ""
	}
	if lm, ok := parseHTTPDate(hdr.Get("Last-Modified")); ok && heuristicallyCacheable(status) && rt.heuristicPercent > 0 {
		return heuristicFreshness(lm, date, rt.heuristicPercent, heuristicLimit), ""
	}
	return 0, ""
}

func (rt *Route) allowsContentType(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return false
	}
	for _, allowed := range rt.ContentTypes {
		if strings.EqualFold(mt, allowed) {
			return true
		}
	}
	return false
}

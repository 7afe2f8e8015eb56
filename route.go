package rediscache

import (
	"fmt"
	"regexp"
	"strings"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// Route is one named set of cache rules for a path pattern.
type Route struct {
	// Name identifies the route in keys, purges, metrics and stats.
	// Letters, digits, '-', '_' and '.'; it must start with a letter or digit.
	Name string `json:"name"`

	// Path is a path pattern: an exact path, a prefix ending in '*'
	// ("/api/dashboard*"), or a glob where '*' matches any characters,
	// '/' included.
	Path string `json:"path"`

	// TTL is how long a response stays fresh when the origin sets no
	// freshness of its own (s-maxage, max-age, Expires). Zero means only
	// responses the origin marks fresh are stored.
	TTL caddy.Duration `json:"ttl,omitempty"`

	// ForceTTL makes TTL win over the origin's freshness headers, as an
	// app-level cache does. Responses marked no-store or private are still
	// never stored.
	ForceTTL bool `json:"force_ttl,omitempty"`

	// Key is a template of Caddy placeholders whose value is part of the
	// cache key, e.g. "{http.request.header.X-User-Id}". When one of its
	// required placeholders is empty the request is not cached (see
	// KeyOptional). A route whose key has a required placeholder may cache
	// requests that carry Authorization or Cookie, since that placeholder is
	// taken to be the identity; otherwise such requests skip the cache.
	Key string `json:"key,omitempty"`

	// KeyOptional lists placeholders of Key (with or without braces, e.g.
	// "query.platform") that may be empty. Each placeholder of Key is
	// hashed on its own; by default every one is required, and a request
	// for which any required placeholder is empty skips the cache
	// (Cache-Status detail=empty-key). Requests with Cookie or
	// Authorization are cached on a keyed route only when it has at least
	// one required placeholder, which is taken to be the identity.
	KeyOptional []string `json:"key_optional,omitempty"`

	// Tags are templates of tags attached to every entry stored by this
	// route, e.g. "user:{http.request.header.X-User-Id}". A tag purge
	// invalidates every entry carrying the tag.
	Tags []string `json:"tags,omitempty"`

	// Invalidates names other routes that a successful mutation on this
	// route invalidates as well. An item starting with "tag:" is instead a
	// tag template, evaluated with the mutation's placeholders, e.g.
	// "tag:user:{http.request.header.X-User-Id}": that one tag is purged
	// (one write, whatever the number of entries), so a user's write
	// invalidates only that user's entries of routes tagging them so. A tag
	// template with an empty placeholder purges nothing.
	Invalidates []string `json:"invalidates,omitempty"`

	// Vary names request headers whose values are part of the key, in
	// addition to those the upstream names in its Vary header.
	Vary []string `json:"vary,omitempty"`

	// Purge chooses what a successful mutation invalidates: "route" (the
	// default: this route, its Invalidates list and the target URI) or
	// "uri" (only the target URI and same-origin Location and
	// Content-Location).
	Purge string `json:"purge,omitempty"`

	// StaleWhileRevalidate serves an entry this long past its freshness
	// while one background request refreshes it.
	StaleWhileRevalidate caddy.Duration `json:"stale_while_revalidate,omitempty"`

	// RefreshAhead is the window before expiry in which a hit may start
	// one background refresh of the entry, with a probability growing from
	// 0 at the start of the window to 1 at expiry, so a hot entry is
	// refreshed before it expires instead of turning into misses. Default:
	// the last 10% of the entry's freshness, or twice the route's recent
	// upstream time when that is longer (at most half the freshness), so
	// the refresh lands before expiry; unless the route or the entry
	// has stale-while-revalidate (which refreshes after expiry instead);
	// -1 (Caddyfile: off) turns it off.
	RefreshAhead caddy.Duration `json:"refresh_ahead,omitempty"`

	// StaleIfError serves an entry this long past its freshness when the
	// upstream fails or answers 500, 502, 503 or 504.
	StaleIfError caddy.Duration `json:"stale_if_error,omitempty"`

	// CacheControl replaces the Cache-Control header sent to clients on
	// responses of this route. When empty and the route has a Key (so
	// entries are per identity), "private" is sent, so that no shared
	// downstream cache keeps one user's data; otherwise the origin's value
	// is kept.
	CacheControl string `json:"cache_control,omitempty"`

	// ContentTypes, when set, lists the media types (e.g.
	// "application/json") a response must have to be stored; any other
	// Content-Type is passed through but not stored. This stops cache
	// deception through paths like /api/me.css.
	ContentTypes []string `json:"content_types,omitempty"`

	// Heuristic is the percentage of the time since Last-Modified that a
	// response without explicit freshness (and no route ttl) stays fresh,
	// capped at 24h (RFC 9111 §4.2.2), for the listed statuses that allow
	// it. Default: 10; -1 turns heuristic freshness off.
	Heuristic int `json:"heuristic,omitempty"`

	// IgnoreQuery lists query parameter names or globs ("utm_*",
	// "gclid", "fbclid") removed from cacheable requests of this route,
	// from the key and from what the upstream receives alike, so tracking
	// parameters do not split the cache. Risk: the origin never sees them
	// on GET and HEAD requests of the route; do not list a parameter that
	// changes the answer. Default: none.
	IgnoreQuery []string `json:"ignore_query,omitempty"`

	// KeyQuery, when set, is the allowlist of query parameters kept on
	// cacheable requests of this route; every other parameter is removed
	// from the key and from the upstream request alike. Risk: a parameter
	// the origin needs but that is missing here is silently dropped.
	// Default: every parameter is kept.
	KeyQuery []string `json:"key_query,omitempty"`

	matcher          pathMatcher
	fetchEWMA        atomic.Int64 // recent upstream time, ns; see observeFetch
	heuristicPercent int
	keyRepl          bool
	keyParts         []keyTemplatePart
	stats            routeStats
	purgeURI         bool
	routeGen         string
	invalGens        []string
	invalTags        []string        // tag templates of Invalidates, without "tag:"
	invalidatesAt    caddyfile.Token // the Caddyfile's invalidates line, for errors
}

var routeNamePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// unknownInvalidation finds a route whose invalidates list names a route
// that does not exist.
func unknownInvalidation(routes []*Route) (*Route, string) {
	names := make(map[string]bool, len(routes))
	for _, rt := range routes {
		names[rt.Name] = true
	}
	for _, rt := range routes {
		for _, target := range rt.Invalidates {
			if strings.HasPrefix(target, "tag:") {
				continue
			}
			if !names[target] {
				return rt, target
			}
		}
	}
	return nil, ""
}

func (rt *Route) validate() error {
	if !routeNamePattern.MatchString(rt.Name) {
		return fmt.Errorf("route %q: invalid name; use letters, digits, '-', '_' or '.', starting with a letter or digit", rt.Name)
	}
	if _, err := compilePathPattern(rt.Path); err != nil {
		return fmt.Errorf("route %q: %v", rt.Name, err)
	}
	if rt.RefreshAhead < -1 {
		return fmt.Errorf("route %q: refresh_ahead must be a positive duration, or -1 for off", rt.Name)
	}
	if rt.TTL < 0 || rt.StaleWhileRevalidate < 0 || rt.StaleIfError < 0 {
		return fmt.Errorf("route %q: durations must not be negative", rt.Name)
	}
	if _, err := parseKeyTemplate(rt.Key, rt.KeyOptional); err != nil {
		return fmt.Errorf("route %q: %v", rt.Name, err)
	}
	if rt.ForceTTL && rt.TTL <= 0 {
		return fmt.Errorf("route %q: force_ttl needs a ttl greater than zero", rt.Name)
	}
	if rt.Heuristic < -1 || rt.Heuristic > 100 {
		return fmt.Errorf("route %q: heuristic %d: must be a percentage from 1 to 100, or -1 for off", rt.Name, rt.Heuristic)
	}
	switch rt.Purge {
	case "", "route", "uri":
	default:
		return fmt.Errorf("route %q: purge %q: must be 'route' or 'uri'", rt.Name, rt.Purge)
	}
	for _, name := range rt.Vary {
		if name == "" || strings.ContainsAny(name, " \t:,") {
			return fmt.Errorf("route %q: vary %q: not a header name", rt.Name, name)
		}
	}
	if err := validateQueryParams(rt.IgnoreQuery, rt.KeyQuery); err != nil {
		return fmt.Errorf("route %q: %v", rt.Name, err)
	}
	for _, item := range rt.Invalidates {
		if err := checkInvalidatesItem(item); err != nil {
			return fmt.Errorf("route %q: %v", rt.Name, err)
		}
	}
	return nil
}

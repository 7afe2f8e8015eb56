package rediscache

import (
	"fmt"
	"net/http"
	"net/url"
	"path"
	"slices"
	"strings"
)

// Query normalisation (route options ignore_query and key_query). The
// parameters a route drops are removed from the request itself, not only
// from its key: the upstream then computes its answer from exactly what the
// key describes, so a variant (?utm_source=x) can never store an answer
// that depends on a parameter the key ignores. The price is that the origin
// never sees those parameters on cacheable requests of the route (GET and
// HEAD); mutations keep their query as sent.

// queryFilter reports whether a route filters query parameters.
func (rt *Route) queryFilter() bool {
	return len(rt.IgnoreQuery) > 0 || len(rt.KeyQuery) > 0
}

// keepsParam reports whether the route keeps query parameter name.
func (rt *Route) keepsParam(name string) bool {
	if len(rt.KeyQuery) > 0 && !slices.Contains(rt.KeyQuery, name) {
		return false
	}
	for _, glob := range rt.IgnoreQuery {
		if ok, _ := path.Match(glob, name); ok {
			return false
		}
	}
	return true
}

// filterQuery returns raw without the parameters the route drops, keeping
// the others in order and encoded as sent.
func (rt *Route) filterQuery(raw string) string {
	if raw == "" || !rt.queryFilter() {
		return raw
	}
	var kept []string
	for _, part := range strings.Split(raw, "&") {
		if part == "" {
			continue
		}
		name, _, _ := strings.Cut(part, "=")
		if dec, err := url.QueryUnescape(name); err == nil {
			name = dec
		}
		if rt.keepsParam(name) {
			kept = append(kept, part)
		}
	}
	return strings.Join(kept, "&")
}

// normalizeQuery removes the parameters the route drops from a cacheable
// request, for the key and the upstream alike.
func (rt *Route) normalizeQuery(r *http.Request) {
	if !rt.queryFilter() {
		return
	}
	if q := rt.filterQuery(r.URL.RawQuery); q != r.URL.RawQuery {
		r.URL.RawQuery = q
		r.URL.ForceQuery = false
		r.RequestURI = r.URL.RequestURI()
	}
}

// validateQueryParams checks the names and globs of ignore_query and
// key_query.
func validateQueryParams(ignore, keep []string) error {
	for _, g := range ignore {
		if _, err := path.Match(g, ""); err != nil || g == "" || strings.ContainsAny(g, "&= ") {
			return fmt.Errorf("ignore_query %q: not a parameter name or glob such as utm_*", g)
		}
	}
	for _, k := range keep {
		if k == "" || strings.ContainsAny(k, "&= *?[") {
			return fmt.Errorf("key_query %q: not a parameter name", k)
		}
	}
	return nil
}

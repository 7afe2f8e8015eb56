package rediscache

import (
	"context"
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/redis/go-redis/v9"
)

// Inspection endpoints of the admin API: what is stored for a URL
// (GET /redis_cache/entry) and a bounded listing of a route's entry keys
// (GET /redis_cache/keys).

const (
	defaultKeysLimit = 100
	maxKeysLimit     = 10000
)

// keyInfo is one listed entry key.
type keyInfo struct {
	Key   string  `json:"key"`
	Bytes int64   `json:"bytes"`           // value size (Redis: MEMORY USAGE, overhead included)
	TTL   float64 `json:"ttl_s,omitempty"` // remaining store lifetime in seconds; 0: none
}

// inspectRequest builds the request an entry lookup is computed for: GET
// of rawURL with the given "Name: value" header lines, prepared like a
// request Caddy serves, so key templates and Vary see the same values.
func inspectRequest(ctx context.Context, rawURL string, headers []string) (*http.Request, error) {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, apiError(http.StatusBadRequest, "url %q: give an absolute http or https URL", rawURL)
	}
	r, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, apiError(http.StatusBadRequest, "url %q: %v", rawURL, err)
	}
	r.RequestURI = u.RequestURI()
	r.RemoteAddr = "127.0.0.1:0"
	for _, line := range headers {
		name, value, ok := strings.Cut(line, ":")
		if !ok || !isToken(strings.TrimSpace(name)) {
			return nil, apiError(http.StatusBadRequest, "header %q: give Name:value", line)
		}
		r.Header.Add(strings.TrimSpace(name), strings.TrimSpace(value))
	}
	if u.Scheme == "https" {
		r.TLS = new(tls.ConnectionState)
	}
	return caddyhttp.PrepareRequest(r, caddy.NewReplacer(), httptest.NewRecorder(), nil), nil
}

// inspectEntry describes what h holds for r, or nil when no route matches.
func (h *Handler) inspectEntry(r *http.Request) (map[string]any, error) {
	normPath, canonical := normalizedPath(r)
	rt := h.matchRoute(normPath)
	if rt == nil {
		return nil, nil
	}
	out := map[string]any{"namespace": h.Namespace, "route": rt.Name, "store": h.store.backend.kind()}
	key, skip := h.prepareKey(r, rt, normPath, canonical)
	if skip != "" {
		out["skipped"] = skip
		return out, nil
	}
	out["key"] = key.primary
	raw, _, _, err := h.store.get(r.Context(), key.primary, nil, nil)
	if err != nil {
		return nil, err
	}
	var e *entry
	if raw != nil {
		if e, err = decodeEntry(raw); err != nil {
			out["corrupt"] = err.Error()
			return out, nil
		}
	}
	if e != nil && e.kind == kindVaryIndex {
		out["vary"] = e.vary
		vk := variantKey(key.primary, e.varyEpoch, e.vary, r)
		out["variant_key"] = vk
		e = nil
		if raw, _, _, err = h.store.get(r.Context(), vk, nil, nil); err != nil {
			return nil, err
		}
		if raw != nil {
			if e, err = decodeEntry(raw); err != nil {
				out["corrupt"] = err.Error()
				return out, nil
			}
		}
		out["bytes"] = len(raw)
	} else {
		out["bytes"] = len(raw)
	}
	if e == nil || e.kind != kindResponse {
		out["found"] = false
		return out, nil
	}
	out["found"] = true
	h.describeEntry(r.Context(), out, e, append([]string{h.allGenKey(), rt.routeGen, key.uriGen}, h.requestTagGens(r, rt)...))
	if lt := h.store.local; lt != nil {
		_, held := lt.entries.get(key.primary)
		out["local_tier"] = held
	}
	return out, nil
}

// describeEntry adds an entry's details, and whether each generation it
// recorded is still current, to out.
func (h *Handler) describeEntry(ctx context.Context, out map[string]any, e *entry, want []string) {
	now := time.Now()
	age := e.age(now)
	out["status"] = e.status
	out["headers"] = e.header
	out["body_bytes"] = len(e.body)
	out["stored_at"] = e.storedAt.UTC().Format(time.RFC3339)
	out["age_s"] = int64(age / time.Second)
	out["fresh_for_s"] = int64(e.freshFor / time.Second)
	out["ttl_s"] = int64((e.freshFor - age) / time.Second)
	out["stale_while_revalidate_s"] = int64(e.swr / time.Second)
	out["stale_if_error_s"] = int64(e.sie / time.Second)
	out["no_cache"] = e.noCache
	keys := make([]string, 0, len(e.gens))
	for _, g := range e.gens {
		keys = append(keys, g.key)
	}
	cur, err := h.store.gens(ctx, keys)
	type genJSON struct {
		Key      string `json:"key"`
		Recorded string `json:"recorded"`
		Current  string `json:"current"`
		Valid    bool   `json:"valid"`
	}
	gens := make([]genJSON, 0, len(keys))
	var tags []string
	valid := err == nil
	for i, g := range e.gens {
		gj := genJSON{Key: g.key, Recorded: g.val}
		if err == nil && i < len(cur) {
			gj.Current = cur[i]
			gj.Valid = cur[i] != genMissing && hardPart(cur[i]) == hardPart(g.val) && !h.store.pending.covers(g.key)
		}
		valid = valid && gj.Valid
		gens = append(gens, gj)
		if rest, ok := strings.CutPrefix(g.key, h.Namespace+":_g:t:"); ok {
			if i := strings.LastIndexByte(rest, ':'); i > 0 {
				rest = rest[:i] // the escaped tag, without its hash
			}
			tags = append(tags, rest)
		}
	}
	for _, k := range want {
		if !e.records(k) {
			valid = false
		}
	}
	out["generations"] = gens
	out["tags"] = tags
	fresh := valid && !e.noCache && age < e.freshFor
	out["servable"] = valid
	out["fresh"] = fresh
	if err != nil {
		out["generations_error"] = err.Error()
	}
}

// listKeys lists up to limit entry keys matching glob, with size and TTL.
func (h *Handler) listKeys(ctx context.Context, glob string, limit int) ([]keyInfo, error) {
	switch b := h.store.backend.(type) {
	case *redisStore:
		return b.listKeys(ctx, glob, limit, h.isEntryKey)
	case *memoryStore:
		return b.listKeys(glob, limit, h.isEntryKey), nil
	}
	return nil, apiError(http.StatusNotImplemented, "store %s cannot list keys", h.store.backend.kind())
}

func (m *memoryStore) listKeys(glob string, limit int, keep func(string) bool) []keyInfo {
	c := m.items
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []keyInfo
	now := time.Now()
	for k, el := range c.items {
		if len(out) >= limit {
			break
		}
		if !globMatch(glob, k) || !keep(k) {
			continue
		}
		it := el.Value.(*lruItem[[]byte])
		ki := keyInfo{Key: k, Bytes: it.size}
		if !it.expires.IsZero() {
			ki.TTL = it.expires.Sub(now).Seconds()
		}
		out = append(out, ki)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out
}

// listKeys SCANs every master (one node, or each master of a Cluster) in
// bounded steps until limit keys are found, then reads their size and TTL
// in one pipeline per node.
func (s *redisStore) listKeys(ctx context.Context, glob string, limit int, keep func(string) bool) ([]keyInfo, error) {
	var out []keyInfo
	scanNode := func(ctx context.Context, c *redis.Client) error {
		var cursor uint64
		var keys []string
		for len(out)+len(keys) < limit {
			batch, next, err := c.Scan(ctx, cursor, glob, scanBatch).Result()
			if err != nil {
				return err
			}
			for _, k := range batch {
				if keep(k) && len(out)+len(keys) < limit {
					keys = append(keys, k)
				}
			}
			if cursor = next; cursor == 0 {
				break
			}
		}
		if len(keys) == 0 {
			return nil
		}
		pipe := c.Pipeline()
		sizes := make([]*redis.IntCmd, len(keys))
		ttls := make([]*redis.DurationCmd, len(keys))
		for i, k := range keys {
			sizes[i] = pipe.MemoryUsage(ctx, k)
			ttls[i] = pipe.PTTL(ctx, k)
		}
		_, _ = pipe.Exec(ctx) // a key gone meanwhile fails alone
		for i, k := range keys {
			ki := keyInfo{Key: k, Bytes: sizes[i].Val()}
			if d := ttls[i].Val(); d > 0 {
				ki.TTL = d.Seconds()
			}
			out = append(out, ki)
		}
		return nil
	}
	var err error
	switch c := s.client.(type) {
	case *redis.ClusterClient:
		var mu sync.Mutex // ForEachMaster runs nodes concurrently
		err = c.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error {
			mu.Lock()
			defer mu.Unlock()
			return scanNode(ctx, node)
		})
	case *redis.Client:
		err = scanNode(ctx, c)
	default:
		return nil, apiError(http.StatusNotImplemented, "this Redis client cannot list keys")
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, err
}

func (adminAPI) handleEntry(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		return apiError(http.StatusMethodNotAllowed, "method not allowed; use GET")
	}
	q := r.URL.Query()
	var results []map[string]any
	for _, h := range uniqueHandlers() {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		req, err := inspectRequest(ctx, q.Get("url"), q["header"])
		if err != nil {
			cancel()
			return err
		}
		res, err := h.inspectEntry(req)
		cancel()
		if err != nil {
			return apiError(http.StatusBadGateway, "lookup failed: %v", err)
		}
		if res != nil && res["found"] == true {
			results = append(results, res)
		}
	}
	if len(results) == 0 {
		return apiError(http.StatusNotFound, "nothing stored for %s", q.Get("url"))
	}
	return writeJSON(w, map[string]any{"entries": results})
}

func (adminAPI) handleKeys(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		return apiError(http.StatusMethodNotAllowed, "method not allowed; use GET")
	}
	q := r.URL.Query()
	limit := defaultKeysLimit
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > maxKeysLimit {
			return apiError(http.StatusBadRequest, "limit %q: a number from 1 to %d", s, maxKeysLimit)
		}
		limit = n
	}
	route := q.Get("route")
	if route != "" && !routeNamePattern.MatchString(route) {
		return apiError(http.StatusBadRequest, "route %q: not a route name", route)
	}
	var stores []map[string]any
	known := route == ""
	for _, h := range uniqueHandlers() {
		glob := h.Namespace + ":*"
		if route != "" {
			if h.routeByName[route] == nil {
				continue
			}
			glob = h.Namespace + ":" + route + ":*"
		}
		known = true
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		keys, err := h.listKeys(ctx, glob, limit)
		cancel()
		if err != nil {
			return apiError(http.StatusBadGateway, "listing keys failed: %v", err)
		}
		stores = append(stores, map[string]any{"namespace": h.Namespace, "store": h.store.backend.kind(), "keys": keys, "truncated": len(keys) >= limit})
	}
	if !known {
		return apiError(http.StatusBadRequest, "unknown route %q", route)
	}
	return writeJSON(w, map[string]any{"stores": stores})
}

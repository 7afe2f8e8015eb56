// Package rediscache is a Caddy HTTP handler that caches upstream responses
// in Redis (or in an embedded in-memory store), with per-route TTLs and keys,
// X-Cache and Cache-Status headers, purges on mutations and through the admin
// API, and a fall-through to the upstream whenever the store misbehaves.
package rediscache

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Defaults, applied in Provision when a field is left empty.
const (
	defaultNamespace       = "rcache"
	defaultTimeout         = 100 * time.Millisecond
	defaultBreakerFailures = 5
	defaultBreakerCooldown = 2 * time.Second
	defaultMemoryLimit     = 64 << 20
	defaultValidatedCopies = 32 << 20
	defaultMaxEntrySize    = 4 << 20
	defaultInflightBudget  = 256 << 20
	defaultMaxTTL          = 24 * time.Hour
	defaultCoalesceWait    = 10 * time.Second
	defaultFetchTimeout    = time.Minute
	defaultPurgeHeader     = "X-Cache-Purge"
	maxKeyPartLength       = 96
	// defaultStaleIfUnreachable matches revalidationWindow, how long the
	// store keeps an entry with a validator past its freshness.
	defaultStaleIfUnreachable = 10 * time.Minute
)

var defaultCacheableStatus = []int{200, 203, 204, 300, 301, 404, 410}

// Handler caches responses of the routes it is configured with. Requests to
// paths that match no route pass through untouched.
type Handler struct {
	// Redis server URLs (redis:// or rediss:// for TLS). One URL uses a
	// standalone client; several URLs, or a URL with ?cluster=true, use a
	// Redis Cluster client; with SentinelMaster set they are Sentinel
	// addresses. When empty, the embedded in-memory store is used.
	Redis []string `json:"redis,omitempty"`

	// Username for Redis ACL authentication. Placeholders such as
	// {env.REDIS_USER} are resolved at provision time.
	Username string `json:"username,omitempty"`

	// Password (or Upstash token) for Redis. Placeholders such as
	// {env.REDIS_TOKEN} are resolved at provision time, so secrets need not
	// appear in the JSON config. A password in the URL is used otherwise.
	Password string `json:"password,omitempty"`

	// SentinelMaster is the Sentinel master name. When set, the Redis
	// addresses are Sentinel servers and a failover client is used.
	SentinelMaster string `json:"sentinel_master,omitempty"`

	// Namespace prefixes every key this module writes, so several
	// applications can share one Redis. Default: "rcache".
	Namespace string `json:"namespace,omitempty"`

	// PurgeOn lists the request methods that invalidate when their answer
	// is not an error. Default: every method except GET, HEAD, OPTIONS and
	// TRACE, including unknown ones.
	PurgeOn []string `json:"purge_on,omitempty"`

	// PurgeStatus lists the statuses of a mutation's answer that purge the
	// route and the routes it invalidates. Any other non-error status (a
	// redirect to a login page, say) purges only the target URI and
	// same-origin Location, as RFC 9111 §4.4 requires. Default: every 2xx
	// status.
	PurgeStatus []int `json:"purge_status,omitempty"`

	// Timeout bounds every store operation (dial, read, write). When it
	// passes, the request goes to the upstream with X-Cache: SKIP.
	// Default: 100ms.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// BreakerFailures is how many consecutive store failures open the
	// circuit breaker; while it is open the store is not contacted and
	// requests skip the cache. Default: 5.
	BreakerFailures int `json:"breaker_failures,omitempty"`

	// BreakerCooldown is how long the breaker stays open before one probe
	// request tries the store again. Default: 2s.
	BreakerCooldown caddy.Duration `json:"breaker_cooldown,omitempty"`

	// MemoryLimit bounds the embedded in-memory store, in bytes. Used only
	// when no Redis is configured. Default: 64 MiB.
	MemoryLimit int64 `json:"memory_limit,omitempty"`

	// LocalCache, when set with Redis, adds an in-process tier of this many
	// bytes in front of Redis for hot keys, so that hits need no round
	// trip. Purges reach every instance's tier through Redis pub/sub at
	// once; should a notice be lost, a purged entry is served for at most
	// one second. Default: off.
	LocalCache int64 `json:"local_cache,omitempty"`

	// ValidatedCopies bounds, in bytes, the decoded copies of the Redis
	// entries that each Caddy has read, kept in process (Go's garbage
	// collector may take up to twice that). A hit on an entry held here still
	// asks Redis, in the same round trip as its generation checks, whether
	// the entry is unchanged, but reads only its last 12 bytes instead of
	// the whole response, and decodes nothing. So it never serves anything
	// Redis no longer holds, unlike local_cache. A compressed entry's copy
	// also keeps its decoded body once a client that does not take the
	// coding has asked for it, so that such clients do not pay for
	// decompression on every hit; that body counts against this bound too.
	// With the embedded store, copies save the decoding of entries alike.
	// Default: 32 MiB; -1 turns it off.
	ValidatedCopies int64 `json:"validated_copies,omitempty"`

	// MaxEntrySize is the largest response body that is stored. Larger
	// bodies stream straight to the client and are not held in memory.
	// Default: 4 MiB.
	MaxEntrySize int64 `json:"max_entry_size,omitempty"`

	// MaxTTL caps how long any entry lives in the store, whatever the
	// origin says. Default: 24h.
	MaxTTL caddy.Duration `json:"max_ttl,omitempty"`

	// CacheableStatus lists the response status codes that get a route's
	// ttl (never a 5xx) or heuristic freshness when the origin gives no
	// explicit freshness. Any other status the cache understands is stored
	// only with the origin's explicit freshness (for a 4xx or 5xx: s-maxage
	// or a targeted field). Default: 200, 203, 204, 300, 301, 404, 410.
	CacheableStatus []int `json:"status,omitempty"`

	// PurgeHeader is the response header through which the upstream names
	// routes and tags to purge ("dashboard, tag:user:123"). It is removed
	// before the response reaches the client. Default: X-Cache-Purge.
	PurgeHeader string `json:"purge_header,omitempty"`

	// TagsHeader names one response field through which the upstream adds
	// tags to a stored entry; kept for compatibility, it is used together
	// with TagsHeaders. When neither is set, the tag fields are
	// Surrogate-Key (tags separated by spaces), Cache-Tag and X-Cache-Tags
	// (separated by commas). Every tag field is removed before the response
	// reaches the client.
	TagsHeader string `json:"tags_header,omitempty"`

	// TagsHeaders lists the response fields through which the upstream
	// tags its answers. A field named Surrogate-Key separates tags with
	// spaces, any other with commas. Setting it (or TagsHeader) replaces
	// the default set. Default: Surrogate-Key, Cache-Tag, X-Cache-Tags.
	TagsHeaders []string `json:"tags_headers,omitempty"`

	// CoalesceWait is the lifetime of the lock through which, with
	// Coalesce, one Caddy fetches a cold key for all: its holder renews it
	// while its upstream answers, so it only runs out when the holder dies.
	// Default: 10s.
	CoalesceWait caddy.Duration `json:"coalesce_wait,omitempty"`

	// FetchTimeout bounds how long requests wait for an upstream request
	// that another request made for the same key (here or, with Coalesce,
	// on another Caddy), and how long such a shared upstream request goes
	// on after the client that started it went away while others wait for
	// it. Default: 1m.
	FetchTimeout caddy.Duration `json:"fetch_timeout,omitempty"`

	// Coalesce extends request coalescing across every Caddy sharing the
	// store: on a miss, one instance takes a short lock in the store (SET NX
	// PX, released by compare-and-delete) and fetches, while the others
	// wait up to CoalesceWait for its entry. Within one instance, misses
	// are always coalesced.
	Coalesce bool `json:"coalesce,omitempty"`

	// RequestCacheControl chooses how clients' Cache-Control request
	// directives are treated: "ignore" (the default, which protects the
	// origin: clients cannot force misses) obeys only only-if-cached;
	// "honor" also obeys no-cache, no-store, max-age, min-fresh and
	// max-stale.
	RequestCacheControl string `json:"request_cache_control,omitempty"`

	// StripRequestHeaders adds request fields to those removed from every
	// cacheable request unless the route keys on them (through its key or
	// vary): fields an origin might read that the key does not describe.
	// The default list, always applied, is X-Original-URL, X-Rewrite-URL,
	// X-Override-URL, X-HTTP-Method-Override, X-HTTP-Method,
	// X-Method-Override, X-Forwarded-Host, X-Forwarded-Server, X-Host,
	// X-Forwarded-Scheme, Forwarded, X-Forwarded-Port, X-Forwarded-Prefix,
	// X-Forwarded-Uri, X-Forwarded-Path and X-Original-Host.
	StripRequestHeaders []string `json:"strip_request_headers,omitempty"`

	// InflightBudget bounds, in bytes, the response bodies all requests of
	// this handler hold in memory while they are being stored, counting
	// each body twice (the body, and its encoding for the store). An answer
	// that does not fit streams through to the client unstored
	// (Cache-Status detail=budget). Default: 256 MiB.
	InflightBudget int64 `json:"inflight_budget,omitempty"`

	// TargetedCacheControl lists the targeted cache-control fields (RFC
	// 9213) this cache obeys, in order of precedence. The first one in a
	// response with a valid, non-empty value replaces Cache-Control and
	// Expires for this cache; clients still receive every field as the
	// origin sent it. Default: ["CDN-Cache-Control"]; add
	// "Surrogate-Control" for origins written for Fastly or Akamai.
	TargetedCacheControl []string `json:"targeted_cache_control,omitempty"`

	// StaleIfUnreachable lets a stale entry be served, up to this long past
	// its freshness, when the origin cannot be reached at all (RFC 9111
	// §4.2.4), unless it says must-revalidate, proxy-revalidate, s-maxage
	// or no-cache. It applies to entries still in the store, which keeps
	// those with a validator 10 minutes past their freshness. Default: 10m;
	// -1 (Caddyfile: off) turns it off.
	StaleIfUnreachable caddy.Duration `json:"stale_if_unreachable,omitempty"`

	// Compress chooses how response bodies are stored: "zstd", "gzip" or
	// "off". A body of a textual media type (JSON, text/*, JavaScript,
	// XML, SVG, …) larger than 1 KiB is stored compressed when that saves
	// at least 10%; clients that accept the coding get the stored bytes as
	// they are, others get them decoded as they are sent. Answers the
	// upstream sent gzip- or zstd-coded are stored as they came whatever
	// this says. Default: "gzip", which every HTTP client accepts, so hits
	// are served as stored (see the README for the measurements).
	Compress string `json:"compress,omitempty"`

	// CompressLevel is the codec's compression level: 1-22 for zstd
	// (mapped to the nearest of the four levels the Go encoder has), 1-9
	// for gzip. Default: 1 (the fastest of each; misses pay for it).
	CompressLevel int `json:"compress_level,omitempty"`

	// PurgeMethod, when set, answers requests with a purge method (PURGE)
	// in the module: the target URI, or the tags a Surrogate-Key field
	// names, are purged for the clients its matchers allow. Default: off,
	// so such requests go to the upstream like any other mutation.
	PurgeMethod *PurgeMethod `json:"purge_method,omitempty"`

	// Routes are tried in order; the first whose path pattern matches the
	// request handles it.
	Routes []*Route `json:"routes,omitempty"`

	store          *guardedStore
	storeKey       string
	logger         *zap.Logger
	purgeMethods   map[string]bool
	purgeStatus    map[int]bool // nil: every 2xx
	cacheable      map[int]bool
	routeByName    map[string]*Route
	flights        *flightGroup
	metrics        *handlerMetrics
	genTTL         time.Duration
	ctx            caddy.Context
	honorRequestCC bool
	background     *sync.WaitGroup

	strippedHeaders []string
	inflight        *inflightBudget
	compressor      *compressor // nil: compression off
	tagHeaders      []string    // canonical names of the tag fields
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.redis_cache",
		New: func() caddy.Module { return new(Handler) },
	}
}

var namespacePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// Provision sets defaults, compiles routes and obtains the store.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.ctx = ctx
	h.background = new(sync.WaitGroup)
	h.logger = ctx.Logger()
	installRedisLogger()
	h.setDefaults()
	h.compileTagHeaders()
	if err := h.compileRoutes(); err != nil {
		return err
	}
	h.purgeMethods = methodSet(h.PurgeOn)
	if err := h.provisionPurgeMethod(ctx); err != nil {
		return err
	}
	if len(h.PurgeStatus) > 0 {
		h.purgeStatus = make(map[int]bool, len(h.PurgeStatus))
		for _, code := range h.PurgeStatus {
			h.purgeStatus[code] = true
		}
	}
	h.cacheable = make(map[int]bool, len(h.CacheableStatus))
	for _, code := range h.CacheableStatus {
		h.cacheable[code] = true
	}
	h.genTTL = time.Duration(h.MaxTTL) + time.Hour
	h.honorRequestCC = h.RequestCacheControl == "honor"
	h.flights = newFlightGroup()
	h.inflight = newInflightBudget(h.InflightBudget)
	compressor, err := newCompressor(h.Compress, h.CompressLevel)
	if err != nil {
		return fmt.Errorf("compress: %v", err)
	}
	h.compressor = compressor

	metrics, err := provisionMetrics(ctx)
	if err != nil {
		return err
	}
	h.metrics = metrics

	store, key, err := h.obtainStore()
	if err != nil {
		return err
	}
	h.store, h.storeKey = store, key
	h.store.serveNamespace(h.Namespace, h.genTTL)
	registerHandler(h)
	return nil
}

func (h *Handler) setDefaults() {
	if h.Namespace == "" {
		h.Namespace = defaultNamespace
	}
	if h.Timeout == 0 {
		h.Timeout = caddy.Duration(defaultTimeout)
	}
	if h.BreakerFailures == 0 {
		h.BreakerFailures = defaultBreakerFailures
	}
	if h.BreakerCooldown == 0 {
		h.BreakerCooldown = caddy.Duration(defaultBreakerCooldown)
	}
	if h.ValidatedCopies == 0 {
		h.ValidatedCopies = defaultValidatedCopies
	}
	if h.MemoryLimit == 0 {
		h.MemoryLimit = defaultMemoryLimit
	}
	if h.MaxEntrySize == 0 {
		h.MaxEntrySize = defaultMaxEntrySize
	}
	if h.InflightBudget == 0 {
		h.InflightBudget = defaultInflightBudget
	}
	if h.MaxTTL == 0 {
		h.MaxTTL = caddy.Duration(defaultMaxTTL)
	}
	if h.CoalesceWait == 0 {
		h.CoalesceWait = caddy.Duration(defaultCoalesceWait)
	}
	if h.FetchTimeout == 0 {
		h.FetchTimeout = caddy.Duration(defaultFetchTimeout)
	}
	if len(h.CacheableStatus) == 0 {
		h.CacheableStatus = defaultCacheableStatus
	}
	if h.PurgeHeader == "" {
		h.PurgeHeader = defaultPurgeHeader
	}
	if h.Compress == "" {
		h.Compress = defaultCompress
	}
	switch {
	case h.StaleIfUnreachable == 0:
		h.StaleIfUnreachable = caddy.Duration(defaultStaleIfUnreachable)
	case h.StaleIfUnreachable < 0:
		h.StaleIfUnreachable = 0
	}
	if len(h.TargetedCacheControl) == 0 {
		h.TargetedCacheControl = defaultTargetedFields
	}
}

func (h *Handler) compileRoutes() error {
	h.strippedHeaders = append(canonicalHeaderNames(slices.Clone(h.StripRequestHeaders)...), defaultStrippedHeaders...)
	h.routeByName = make(map[string]*Route, len(h.Routes))
	for i, rt := range h.Routes {
		if rt == nil {
			return fmt.Errorf("route %d: empty route", i)
		}
		m, err := compilePathPattern(rt.Path)
		if err != nil {
			return fmt.Errorf("route %q: %v", rt.Name, err)
		}
		rt.matcher = m
		rt.purgeURI = rt.Purge == "uri"
		rt.heuristicPercent = rt.Heuristic
		if rt.Heuristic == 0 {
			rt.heuristicPercent = defaultHeuristicPercent
		}
		rt.keyRepl = rt.Key != ""
		if rt.keyParts, err = parseKeyTemplate(rt.Key, rt.KeyOptional); err != nil {
			return fmt.Errorf("route %q: %v", rt.Name, err)
		}
		rt.routeGen = h.routeGenKey(rt.Name)
		h.routeByName[rt.Name] = rt
	}
	for _, rt := range h.Routes {
		rt.invalGens, rt.invalTags = rt.invalGens[:0], rt.invalTags[:0]
		for _, name := range rt.Invalidates {
			if tpl, ok := strings.CutPrefix(name, "tag:"); ok {
				rt.invalTags = append(rt.invalTags, tpl)
				continue
			}
			rt.invalGens = append(rt.invalGens, h.routeGenKey(name))
		}
	}
	return nil
}

// Validate checks the configuration for errors that Provision's defaults
// cannot repair, naming the offending setting.
func (h *Handler) Validate() error {
	if !namespacePattern.MatchString(h.Namespace) {
		return fmt.Errorf("namespace %q: use letters, digits, '-', '_' or '.', starting with a letter or digit", h.Namespace)
	}
	if h.Timeout < 0 || h.BreakerCooldown < 0 || h.MaxTTL < 0 || h.CoalesceWait < 0 || h.FetchTimeout < 0 {
		return fmt.Errorf("durations must not be negative")
	}
	if h.BreakerFailures < 0 || h.MemoryLimit < 0 || h.MaxEntrySize < 0 || h.LocalCache < 0 {
		return fmt.Errorf("breaker_failures, memory_limit, local_cache and max_entry_size must not be negative")
	}
	switch h.Compress {
	case "", "zstd", "gzip", "off":
	default:
		return fmt.Errorf("compress %q: must be 'zstd', 'gzip' or 'off'", h.Compress)
	}
	if codec := cmp.Or(h.Compress, defaultCompress); !validCompressLevel(codec, h.CompressLevel) {
		return fmt.Errorf("compress_level %d: out of range for %s (zstd: 1-22, gzip: 1-9, off: none)", h.CompressLevel, codec)
	}
	if h.InflightBudget < 0 {
		return fmt.Errorf("inflight_budget %d: must not be negative", h.InflightBudget)
	}
	for _, name := range h.StripRequestHeaders {
		if name == "" || strings.ContainsAny(name, " \t:,") {
			return fmt.Errorf("strip_request_headers %q: not a header name", name)
		}
	}
	if h.ValidatedCopies < -1 {
		return fmt.Errorf("validated_copies %d: must be a size in bytes, or -1 for off", h.ValidatedCopies)
	}
	switch h.RequestCacheControl {
	case "", "ignore", "honor":
	default:
		return fmt.Errorf("request_cache_control %q: must be 'ignore' or 'honor'", h.RequestCacheControl)
	}
	for _, code := range h.CacheableStatus {
		if code < 100 || code > 599 {
			return fmt.Errorf("status %d: not an HTTP status code", code)
		}
	}
	for _, code := range h.PurgeStatus {
		if code < 200 || code > 399 {
			return fmt.Errorf("purge_status %d: must be a 2xx or 3xx status (errors never purge)", code)
		}
	}
	for _, name := range append([]string{h.TagsHeader}, h.TagsHeaders...) {
		if name != "" && !isToken(name) {
			return fmt.Errorf("tags_header %q: not a header field name", name)
		}
	}
	for _, name := range h.TargetedCacheControl {
		if !isToken(name) {
			return fmt.Errorf("targeted_cache_control %q: not a header field name", name)
		}
	}
	for _, m := range h.PurgeOn {
		if m == "" || strings.ToUpper(m) != m {
			return fmt.Errorf("purge_on %q: methods are upper-case tokens such as POST", m)
		}
	}
	if h.PurgeMethod != nil {
		if err := h.PurgeMethod.validate(); err != nil {
			return err
		}
	}
	seen := make(map[string]bool, len(h.Routes))
	for _, rt := range h.Routes {
		if err := rt.validate(); err != nil {
			return err
		}
		if seen[rt.Name] {
			return fmt.Errorf("route %q: duplicate route name", rt.Name)
		}
		seen[rt.Name] = true
	}
	if rt, target := unknownInvalidation(h.Routes); rt != nil {
		return fmt.Errorf("route %q: invalidates unknown route %q", rt.Name, target)
	}
	return nil
}

// Cleanup releases this config's hold on the shared store.
func (h *Handler) Cleanup() error {
	unregisterHandler(h)
	if h.background != nil {
		h.background.Wait()
	}
	if h.storeKey != "" {
		if _, err := storePool.Delete(h.storeKey); err != nil {
			return err
		}
	}
	return nil
}

// obtainStore returns the store for this config, shared through storePool
// with every other config (including the previous one, across a reload)
// that uses the same settings.
func (h *Handler) obtainStore() (*guardedStore, string, error) {
	repl := caddy.NewReplacer()
	opts := storeOptions{
		urls:            make([]string, len(h.Redis)),
		username:        repl.ReplaceKnown(h.Username, ""),
		password:        repl.ReplaceKnown(h.Password, ""),
		sentinelMaster:  repl.ReplaceKnown(h.SentinelMaster, ""),
		timeout:         time.Duration(h.Timeout),
		breakerFailures: h.BreakerFailures,
		breakerCooldown: time.Duration(h.BreakerCooldown),
		memoryLimit:     h.MemoryLimit,
		localLimit:      h.LocalCache,
		copiesLimit:     h.ValidatedCopies,
	}
	for i, u := range h.Redis {
		opts.urls[i] = repl.ReplaceKnown(u, "")
	}
	key := opts.poolKey()
	val, _, err := storePool.LoadOrNew(key, func() (caddy.Destructor, error) {
		return newGuardedStore(opts, h.logger.Named("store"), h.metrics)
	})
	if err != nil {
		return nil, "", err
	}
	return val.(*guardedStore), key, nil
}

// poolKey identifies a store configuration; the hash keeps secrets out of
// anything that might print the key.
func (o storeOptions) poolKey() string {
	sum := sha256.Sum256([]byte(fmt.Sprintf("%q|%q|%q|%q|%s|%d|%s|%d|%d|%d",
		o.urls, o.username, o.password, o.sentinelMaster, o.timeout,
		o.breakerFailures, o.breakerCooldown, o.memoryLimit, o.localLimit, o.copiesLimit)))
	return "redis_cache:" + hex.EncodeToString(sum[:16])
}

// storePool shares store connections across config reloads.
var storePool = caddy.NewUsagePool()

// liveHandlers holds every provisioned handler, for the admin API.
var liveHandlers sync.Map

func registerHandler(h *Handler)   { liveHandlers.Store(h, struct{}{}) }
func unregisterHandler(h *Handler) { liveHandlers.Delete(h) }

// methodSet returns the set of purging methods; nil means every unsafe one.
func methodSet(methods []string) map[string]bool {
	if len(methods) == 0 {
		return nil
	}
	set := make(map[string]bool, len(methods))
	for _, m := range methods {
		set[m] = true
	}
	return set
}

// purgesRoutes reports whether a mutation answered with code purges its
// route and the routes it invalidates.
func (h *Handler) purgesRoutes(code int) bool {
	if h.purgeStatus == nil {
		return code >= 200 && code < 300
	}
	return h.purgeStatus[code]
}

func (h *Handler) isPurgeMethod(method string) bool {
	if h.purgeMethods == nil {
		switch method {
		case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
			return false
		}
		return true
	}
	return h.purgeMethods[method]
}

// Interface guards
var (
	_ caddy.Provisioner  = (*Handler)(nil)
	_ caddy.Validator    = (*Handler)(nil)
	_ caddy.CleanerUpper = (*Handler)(nil)
)

package rediscache

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"
	"github.com/redis/go-redis/v9"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("redis_cache", parseCaddyfile)
	// After authentication and request header rewrites, so keys can use
	// what they establish; before encode and reverse_proxy, so the cache
	// wraps the whole upstream exchange.
	httpcaddyfile.RegisterDirectiveOrder("redis_cache", httpcaddyfile.After, "request_header")
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	hd := new(Handler)
	err := hd.UnmarshalCaddyfile(h.Dispenser)
	return hd, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens:
//
//	redis_cache {
//		redis <url> [<url>...]
//		username <user>
//		password <secret>
//		sentinel_master <name>
//		namespace <prefix>
//		purge_on <methods...>
//		purge_status <codes...>
//		timeout <duration>
//		compress zstd|gzip|off [<level>]
//		breaker <failures> <cooldown>
//		memory_limit <size>
//		max_entry_size <size>
//		local_cache <size>
//		max_ttl <duration>
//		status <codes...>
//		purge_header <name>
//		tags_header <name...>
//		purge_method <METHOD> {
//			<request matchers...>
//		}
//		request_cache_control ignore|honor
//		targeted_cache_control <field...>
//		stale_if_unreachable <duration>|off
//		coalesce
//		coalesce_wait <duration>
//		fetch_timeout <duration>
//		strip_request_headers <name...>
//		inflight_budget <size>
//		route <name> <path-pattern> [<ttl>] {
//			ttl <duration>
//			force_ttl
//			key <template>
//			key_optional <placeholder...>
//			tags <template...>
//			invalidates <route|tag:template...>
//			vary <header...>
//			purge route|uri
//			stale_while_revalidate <duration>
//			stale_if_error <duration>
//			cache_control <value>
//			content_type <media-type...>
//			heuristic <percent>|off
//			refresh_ahead <duration>|off
//			ignore_query <param-glob...>
//			key_query <param...>
//		}
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	if d.NextArg() {
		return d.Errf("redis_cache takes no arguments on its first line, got %q; put settings in a block", d.Val())
	}
	seen := map[string]bool{}
	for d.NextBlock(0) {
		name := d.Val()
		if name != "route" {
			if seen[name] {
				return d.Errf("duplicate subdirective %q", name)
			}
			seen[name] = true
		}
		if err := h.unmarshalSetting(d, name); err != nil {
			return err
		}
	}
	return h.checkRouteReferences(d)
}

func (h *Handler) unmarshalSetting(d *caddyfile.Dispenser, name string) error {
	var err error
	switch name {
	case "redis":
		h.Redis = d.RemainingArgs()
		if len(h.Redis) == 0 {
			return d.ArgErr()
		}
		for _, u := range h.Redis {
			if !strings.HasPrefix(u, "redis://") && !strings.HasPrefix(u, "rediss://") && !strings.HasPrefix(u, "{") {
				return d.Errf("redis %q: URL must start with redis:// or rediss://", redactURL(u))
			}
			if strings.Contains(u, "{") {
				continue // placeholders are resolved at provision
			}
			if _, perr := redis.ParseURL(stripClusterParam(u)); perr != nil {
				return d.Errf("%v", redisURLError(u, perr))
			}
		}
	case "username":
		h.Username, err = singleArg(d)
	case "password":
		h.Password, err = singleArg(d)
	case "sentinel_master":
		h.SentinelMaster, err = singleArg(d)
	case "namespace":
		if h.Namespace, err = singleArg(d); err == nil && !namespacePattern.MatchString(h.Namespace) {
			return d.Errf("namespace %q: use letters, digits, '-', '_' or '.', starting with a letter or digit", h.Namespace)
		}
	case "purge_on":
		h.PurgeOn = d.RemainingArgs()
		if len(h.PurgeOn) == 0 {
			return d.ArgErr()
		}
		for i, m := range h.PurgeOn {
			h.PurgeOn[i] = strings.ToUpper(m)
		}
	case "purge_status":
		h.PurgeStatus, err = statusCodesArg(d, 200, 399, "must be a 2xx or 3xx status code (errors never purge)")
	case "timeout":
		err = durationArg(d, &h.Timeout)
	case "max_ttl":
		err = durationArg(d, &h.MaxTTL)
	case "fetch_timeout":
		err = durationArg(d, &h.FetchTimeout)
	case "request_cache_control":
		if h.RequestCacheControl, err = singleArg(d); err == nil && h.RequestCacheControl != "ignore" && h.RequestCacheControl != "honor" {
			return d.Errf("request_cache_control %q: must be 'ignore' or 'honor'", h.RequestCacheControl)
		}
	case "coalesce_wait":
		err = durationArg(d, &h.CoalesceWait)
	case "coalesce":
		if d.NextArg() {
			return d.ArgErr()
		}
		h.Coalesce = true
	case "breaker":
		args := d.RemainingArgs()
		if len(args) != 2 {
			return d.ArgErr()
		}
		n, convErr := strconv.Atoi(args[0])
		if convErr != nil || n < 1 {
			return d.Errf("breaker failures %q: must be a positive integer", args[0])
		}
		h.BreakerFailures = n
		dur, convErr := caddy.ParseDuration(args[1])
		if convErr != nil || dur <= 0 {
			return d.Errf("breaker cooldown %q: must be a positive duration", args[1])
		}
		h.BreakerCooldown = caddy.Duration(dur)
	case "strip_request_headers":
		if h.StripRequestHeaders, err = listArg(d); err == nil {
			for _, name := range h.StripRequestHeaders {
				if strings.ContainsAny(name, " \t:,{}") {
					return d.Errf("strip_request_headers %q: not a header name", name)
				}
			}
		}
	case "inflight_budget":
		h.InflightBudget, err = sizeArg(d)
	case "memory_limit":
		h.MemoryLimit, err = sizeArg(d)
	case "max_entry_size":
		h.MaxEntrySize, err = sizeArg(d)
	case "local_cache":
		h.LocalCache, err = sizeArg(d)
	case "validated_copies":
		h.ValidatedCopies, err = sizeOrOffArg(d)
	case "status":
		h.CacheableStatus, err = statusCodesArg(d, 100, 599, "not an HTTP status code")
	case "stale_if_unreachable":
		var arg string
		if arg, err = singleArg(d); err == nil {
			h.StaleIfUnreachable, err = durationOrOff(d, name, arg)
		}
	case "targeted_cache_control":
		if h.TargetedCacheControl, err = listArg(d); err == nil {
			for _, name := range h.TargetedCacheControl {
				if !isToken(name) {
					return d.Errf("targeted_cache_control %q: not a header field name", name)
				}
			}
		}
	case "compress":
		err = parseCompress(d, h)
	case "purge_header":
		h.PurgeHeader, err = singleArg(d)
	case "purge_method":
		h.PurgeMethod, err = unmarshalPurgeMethod(d)
	case "tags_header":
		var names []string
		if names, err = listArg(d); err == nil {
			for _, n := range names {
				if !isToken(n) {
					return d.Errf("tags_header %q: not a header field name", n)
				}
			}
			if len(names) == 1 {
				h.TagsHeader = names[0]
			} else {
				h.TagsHeaders = names
			}
		}
	case "route":
		var rt *Route
		if rt, err = unmarshalRoute(d); err == nil {
			for _, other := range h.Routes {
				if other.Name == rt.Name {
					return d.Errf("route %q: duplicate route name", rt.Name)
				}
			}
			h.Routes = append(h.Routes, rt)
		}
	default:
		return d.Errf("unknown subdirective %q", name)
	}
	return err
}

// checkRouteReferences fails adaptation when a route invalidates a route
// that does not exist, rather than waiting for Validate at load time.
func (h *Handler) checkRouteReferences(d *caddyfile.Dispenser) error {
	if rt, target := unknownInvalidation(h.Routes); rt != nil {
		if rt.invalidatesAt.Text != "" {
			return errAtToken(rt.invalidatesAt, "route %q: invalidates unknown route %q", rt.Name, target)
		}
		return d.Errf("route %q: invalidates unknown route %q", rt.Name, target)
	}
	return nil
}

func unmarshalRoute(d *caddyfile.Dispenser) (*Route, error) {
	args := d.RemainingArgs()
	if len(args) < 2 || len(args) > 3 {
		return nil, d.Errf("route needs <name> <path-pattern> [<ttl>], got %d arguments", len(args))
	}
	rt := &Route{Name: args[0], Path: args[1]}
	if !routeNamePattern.MatchString(rt.Name) {
		return nil, d.Errf("route %q: invalid name; use letters, digits, '-', '_' or '.', starting with a letter or digit", rt.Name)
	}
	if _, err := compilePathPattern(rt.Path); err != nil {
		return nil, d.Errf("route %q: %v", rt.Name, err)
	}
	if len(args) == 3 {
		ttl, err := caddy.ParseDuration(args[2])
		if err != nil || ttl < 0 {
			return nil, d.Errf("route %q: ttl %q: not a valid duration", rt.Name, args[2])
		}
		rt.TTL = caddy.Duration(ttl)
	}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		if seen[name] {
			return nil, d.Errf("route %q: duplicate subdirective %q", rt.Name, name)
		}
		seen[name] = true
		if err := rt.unmarshalSetting(d, name); err != nil {
			return nil, err
		}
	}
	if rt.ForceTTL && rt.TTL <= 0 {
		return nil, d.Errf("route %q: force_ttl needs a ttl greater than zero", rt.Name)
	}
	if _, err := parseKeyTemplate(rt.Key, rt.KeyOptional); err != nil {
		return nil, d.Errf("route %q: %v", rt.Name, err)
	}
	return rt, nil
}

func (rt *Route) unmarshalSetting(d *caddyfile.Dispenser, name string) error {
	var err error
	switch name {
	case "ttl":
		err = durationArg(d, &rt.TTL)
	case "force_ttl":
		if d.NextArg() {
			return d.ArgErr()
		}
		rt.ForceTTL = true
	case "key":
		rt.Key, err = singleArg(d)
	case "key_optional":
		if rt.KeyOptional, err = listArg(d); err == nil {
			for _, ph := range rt.KeyOptional {
				if strings.TrimSpace(strings.Trim(ph, "{}")) == "" || strings.ContainsAny(strings.Trim(ph, "{}"), "{} \t") {
					return d.Errf("route %q: key_optional %q: not a placeholder such as {query.platform}", rt.Name, ph)
				}
			}
		}
	case "tags":
		rt.Tags, err = listArg(d)
	case "invalidates":
		rt.invalidatesAt = d.Token()
		if rt.Invalidates, err = listArg(d); err == nil {
			for _, item := range rt.Invalidates {
				if itemErr := checkInvalidatesItem(item); itemErr != nil {
					return d.Errf("route %q: %v", rt.Name, itemErr)
				}
			}
		}
	case "vary":
		rt.Vary, err = listArg(d)
		for i, v := range rt.Vary {
			rt.Vary[i] = strings.TrimSpace(v)
		}
	case "purge":
		if rt.Purge, err = singleArg(d); err == nil && rt.Purge != "route" && rt.Purge != "uri" {
			return d.Errf("route %q: purge %q: must be 'route' or 'uri'", rt.Name, rt.Purge)
		}
	case "stale_while_revalidate":
		err = durationArg(d, &rt.StaleWhileRevalidate)
	case "stale_if_error":
		err = durationArg(d, &rt.StaleIfError)
	case "cache_control":
		rt.CacheControl, err = singleArg(d)
	case "content_type":
		rt.ContentTypes, err = listArg(d)
	case "refresh_ahead":
		var arg string
		if arg, err = singleArg(d); err == nil {
			rt.RefreshAhead, err = durationOrOff(d, name, arg)
		}
	case "ignore_query":
		if rt.IgnoreQuery, err = listArg(d); err == nil {
			if verr := validateQueryParams(rt.IgnoreQuery, nil); verr != nil {
				return d.Errf("route %q: %v", rt.Name, verr)
			}
		}
	case "key_query":
		if rt.KeyQuery, err = listArg(d); err == nil {
			if verr := validateQueryParams(nil, rt.KeyQuery); verr != nil {
				return d.Errf("route %q: %v", rt.Name, verr)
			}
		}
	case "heuristic":
		var arg string
		if arg, err = singleArg(d); err == nil {
			rt.Heuristic, err = parseHeuristic(d, arg)
		}
	default:
		return d.Errf("route %q: unknown subdirective %q", rt.Name, name)
	}
	if err != nil {
		return fmt.Errorf("route %q: %w", rt.Name, err)
	}
	return nil
}

// durationOrOff reads a positive duration, or "off" as -1.
func durationOrOff(d *caddyfile.Dispenser, name, arg string) (caddy.Duration, error) {
	if arg == "off" {
		return -1, nil
	}
	dur, err := caddy.ParseDuration(arg)
	if err != nil || dur <= 0 {
		return 0, d.Errf("%s %q: must be a positive duration (e.g. 10m) or off", name, arg)
	}
	return caddy.Duration(dur), nil
}

// parseHeuristic reads "off" or a percentage such as "10" or "10%".
func parseHeuristic(d *caddyfile.Dispenser, arg string) (int, error) {
	if arg == "off" {
		return -1, nil
	}
	n, err := strconv.Atoi(strings.TrimSuffix(arg, "%"))
	if err != nil || n < 1 || n > 100 {
		return 0, d.Errf("heuristic %q: must be a percentage from 1 to 100, or off", arg)
	}
	return n, nil
}

func singleArg(d *caddyfile.Dispenser) (string, error) {
	args := d.RemainingArgs()
	if len(args) != 1 {
		return "", d.ArgErr()
	}
	return args[0], nil
}

func listArg(d *caddyfile.Dispenser) ([]string, error) {
	args := d.RemainingArgs()
	if len(args) == 0 {
		return nil, d.ArgErr()
	}
	return args, nil
}

func durationArg(d *caddyfile.Dispenser, dst *caddy.Duration) error {
	name := d.Val()
	arg, err := singleArg(d)
	if err != nil {
		return err
	}
	dur, err := caddy.ParseDuration(arg)
	if err != nil {
		return d.Errf("%s %q: not a valid duration (e.g. 30s, 5m)", name, arg)
	}
	if dur < 0 {
		return d.Errf("%s %q: must not be negative", name, arg)
	}
	*dst = caddy.Duration(dur)
	return nil
}

func sizeArg(d *caddyfile.Dispenser) (int64, error) {
	name := d.Val()
	arg, err := singleArg(d)
	if err != nil {
		return 0, err
	}
	return parseSize(d, name, arg)
}

// sizeOrOffArg is sizeArg that also takes "off", as -1.
func sizeOrOffArg(d *caddyfile.Dispenser) (int64, error) {
	name := d.Val()
	arg, err := singleArg(d)
	if err != nil || arg == "off" {
		return -1, err
	}
	return parseSize(d, name, arg)
}

func parseSize(d *caddyfile.Dispenser, name, arg string) (int64, error) {
	n, err := humanize.ParseBytes(arg)
	if err != nil || n == 0 || n > 1<<40 {
		return 0, d.Errf("%s %q: not a valid size (e.g. 64MiB)", name, arg)
	}
	return int64(n), nil
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)

// statusCodesArg reads one or more status codes within [lo, hi], naming the
// first bad one.
func statusCodesArg(d *caddyfile.Dispenser, lo, hi int, problem string) ([]int, error) {
	name := d.Val()
	args := d.RemainingArgs()
	if len(args) == 0 {
		return nil, d.ArgErr()
	}
	codes := make([]int, 0, len(args))
	for _, a := range args {
		code, err := strconv.Atoi(a)
		if err != nil || code < lo || code > hi {
			return nil, d.Errf("%s %q: %s", name, a, problem)
		}
		codes = append(codes, code)
	}
	return codes, nil
}

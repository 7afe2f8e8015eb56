package rediscache

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// PurgeMethod answers purge requests sent as plain HTTP requests with a
// method of their own (the PURGE convention of Varnish, Fastly and Souin):
// a request with the method and no tag field purges its target URI; with a
// Surrogate-Key field, it purges the tags the field names (separated by
// spaces). The module answers it with 200 and a JSON summary; it never
// reaches the upstream. Only requests the matchers accept may purge; others
// get 403 and purge nothing.
type PurgeMethod struct {
	// Method is the request method that purges, e.g. "PURGE". It must not
	// be a method the cache or the upstream uses (GET, HEAD, POST, ...).
	Method string `json:"method"`

	// MatchersRaw lists request matcher sets (any one of them allows the
	// purge), as in a Caddy route's "match", e.g.
	// [{"remote_ip": {"ranges": ["10.0.0.0/8"]}}]. Required: a purge
	// method open to everyone would let anyone empty the cache.
	MatchersRaw caddyhttp.RawMatcherSets `json:"match,omitempty" caddy:"namespace=http.matchers"`

	matchers caddyhttp.MatcherSets
}

// reservedPurgeMethods are methods a purge method must not take over.
var reservedPurgeMethods = map[string]bool{
	http.MethodGet: true, http.MethodHead: true, http.MethodPost: true, http.MethodPut: true,
	http.MethodPatch: true, http.MethodDelete: true, http.MethodOptions: true,
	http.MethodTrace: true, http.MethodConnect: true,
}

func (pm *PurgeMethod) validate() error {
	if pm.Method == "" || !isToken(pm.Method) || strings.ToUpper(pm.Method) != pm.Method {
		return fmt.Errorf("purge_method %q: must be an upper-case method name such as PURGE", pm.Method)
	}
	if reservedPurgeMethods[pm.Method] {
		return fmt.Errorf("purge_method %q: a standard method cannot purge; use PURGE", pm.Method)
	}
	if len(pm.MatchersRaw) == 0 && len(pm.matchers) == 0 { // LoadModule empties MatchersRaw
		return fmt.Errorf("purge_method %s: give a matcher block naming who may purge, e.g. { remote_ip 10.0.0.0/8 }", pm.Method)
	}
	return nil
}

// provisionPurgeMethod loads the purge method's matchers.
func (h *Handler) provisionPurgeMethod(ctx caddy.Context) error {
	pm := h.PurgeMethod
	if pm == nil {
		return nil
	}
	if err := pm.validate(); err != nil {
		return err
	}
	mods, err := ctx.LoadModule(pm, "MatchersRaw")
	if err != nil {
		return fmt.Errorf("purge_method %s: loading matchers: %v", pm.Method, err)
	}
	return pm.matchers.FromInterface(mods)
}

// unmarshalPurgeMethod parses
//
//	purge_method <METHOD> {
//		<request matchers...>
//	}
func unmarshalPurgeMethod(d *caddyfile.Dispenser) (*PurgeMethod, error) {
	if !d.NextArg() {
		return nil, d.ArgErr()
	}
	pm := &PurgeMethod{Method: d.Val()}
	if d.NextArg() {
		return nil, d.Errf("purge_method takes one method name, then a matcher block; got extra %q", d.Val())
	}
	if pm.Method != strings.ToUpper(pm.Method) || !isToken(pm.Method) || reservedPurgeMethods[pm.Method] {
		return nil, d.Errf("purge_method %q: must be an upper-case method of its own, such as PURGE", pm.Method)
	}
	set, err := caddyhttp.ParseCaddyfileNestedMatcherSet(d)
	if err != nil {
		return nil, err
	}
	if len(set) == 0 {
		return nil, d.Errf("purge_method %s: needs a matcher block naming who may purge, e.g. { remote_ip 10.0.0.0/8 }", pm.Method)
	}
	pm.MatchersRaw = caddyhttp.RawMatcherSets{set}
	return pm, nil
}

// purgeMethodResult is the JSON answer to a purge request.
type purgeMethodResult struct {
	Kind   string   `json:"kind"` // "uri" or "tag"
	URI    string   `json:"uri,omitempty"`
	Tags   []string `json:"tags,omitempty"`
	Queued bool     `json:"queued,omitempty"`
}

// servePurgeMethod answers a request with the purge method, never passing
// it on.
func (h *Handler) servePurgeMethod(w http.ResponseWriter, r *http.Request) error {
	ok, err := h.PurgeMethod.matchers.AnyMatchWithError(r)
	if err != nil || !ok {
		h.logger.Debug("purge request refused", zap.String("remote", r.RemoteAddr), zap.String("uri", r.RequestURI))
		return caddyhttp.Error(http.StatusForbidden, fmt.Errorf("%s not allowed for this client", h.PurgeMethod.Method))
	}
	res := purgeMethodResult{Kind: "uri"}
	var gens []string
	if tags := splitTags("Surrogate-Key", r.Header.Values("Surrogate-Key")); len(tags) > 0 {
		res.Kind, res.Tags = "tag", tags
		for _, tag := range tags {
			gens = append(gens, h.tagGenKey(tag))
		}
	} else {
		normPath, _ := normalizedPath(r)
		host := normalizeHost(r.Host)
		query := r.URL.RawQuery
		if rt := h.matchRoute(normPath); rt != nil {
			query = rt.filterQuery(query)
		}
		gens = append(gens, h.uriGenKey(requestScheme(r), host, normPath, sortedQuery(query)))
		res.URI = requestScheme(r) + "://" + host + normPath
		if query != "" {
			res.URI += "?" + query
		}
	}
	res.Queued = h.purgeGens(r.Context(), "method", false, gens...)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	body, _ := json.Marshal(res)
	w.Header().Set("Content-Length", fmt.Sprint(len(body)+1))
	w.WriteHeader(http.StatusOK)
	_, err = w.Write(append(body, '\n'))
	return err
}

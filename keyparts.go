package rediscache

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2"
)

// keyTemplatePart is one placeholder of a route's key template.
type keyTemplatePart struct {
	placeholder string // with its braces: "{query.platform}"
	header      string // the request field it reads, if it reads one
	optional    bool   // may be empty without the request skipping the cache
}

// headerPlaceholderPrefix is how a placeholder names a request field.
const headerPlaceholderPrefix = "http.request.header."

// parseKeyTemplate splits a key template into its placeholders, marking
// those listed in optional. Text outside placeholders is the same for
// every request of the route and adds nothing to the key.
func parseKeyTemplate(tpl string, optional []string) ([]keyTemplatePart, error) {
	var parts []keyTemplatePart
	for i := 0; i < len(tpl); i++ {
		if tpl[i] == '\\' {
			i++ // an escaped character is literal text
			continue
		}
		if tpl[i] != '{' {
			continue
		}
		end := strings.IndexByte(tpl[i:], '}')
		if end < 0 {
			return nil, fmt.Errorf("key %q: unclosed placeholder", tpl)
		}
		ph := tpl[i : i+end+1]
		part := keyTemplatePart{placeholder: ph}
		if name, ok := strings.CutPrefix(ph[1:len(ph)-1], headerPlaceholderPrefix); ok {
			name, _, _ = strings.Cut(name, ":") // {…:default}
			part.header = http.CanonicalHeaderKey(name)
		}
		parts = append(parts, part)
		i += end
	}
	for _, opt := range optional {
		found := false
		for j := range parts {
			if parts[j].placeholder == braced(opt) || parts[j].placeholder == braced(expandShorthand(opt)) {
				parts[j].optional, found = true, true
			}
		}
		if !found {
			return nil, fmt.Errorf("key_optional %q: not a placeholder of the key %q", opt, tpl)
		}
	}
	return parts, nil
}

// caddyfileShorthands are the placeholder shorthands the Caddyfile adapter
// expands inside braces; a key_optional name written without braces is
// expanded here so that it still matches the key.
var caddyfileShorthands = [][2]string{
	{"query.", "http.request.uri.query."},
	{"header.", "http.request.header."},
	{"cookie.", "http.request.cookie."},
	{"labels.", "http.request.host.labels."},
	{"path.", "http.request.uri.path."},
}

func expandShorthand(name string) string {
	bare := strings.Trim(name, "{}")
	for _, sh := range caddyfileShorthands {
		if rest, ok := strings.CutPrefix(bare, sh[0]); ok {
			return sh[1] + rest
		}
	}
	return bare
}

// braced writes a placeholder name with its braces, whichever way the
// configuration gave it.
func braced(name string) string {
	if strings.HasPrefix(name, "{") {
		return name
	}
	return "{" + name + "}"
}

// evaluatedKey is a route's key template evaluated for one request.
type evaluatedKey struct {
	readable string   // the template with its placeholders replaced
	values   []string // each placeholder's value, hashed separately
	missing  bool     // a required placeholder was empty
	// ambiguous: a field the key reads came in several lines. Caddy's
	// placeholder joins them with commas, while an origin may read only
	// the first: lines "a" and "b" would be keyed as the value "a,b".
	ambiguous bool
}

// evaluateKey evaluates each placeholder of the route's key on its own, so
// that no choice of values can make two requests share a key: "a:b" + "c"
// and "a" + "b:c" hash differently.
func (rt *Route) evaluateKey(repl *caddy.Replacer, hdr http.Header) evaluatedKey {
	ek := evaluatedKey{
		readable: strings.TrimSpace(repl.ReplaceAll(rt.Key, "")),
		values:   make([]string, len(rt.keyParts)),
	}
	for i, p := range rt.keyParts {
		v := strings.TrimSpace(repl.ReplaceAll(p.placeholder, ""))
		if v == "" && !p.optional {
			ek.missing = true
		}
		if p.header != "" && len(hdr.Values(p.header)) > 1 {
			ek.ambiguous = true
		}
		ek.values[i] = v
	}
	return ek
}

// trustsCredentials reports whether the route's key carries an identity:
// a placeholder the request cannot skip. Only then may requests with
// Cookie or Authorization share its entries among themselves, because the
// key separates them; the request skips the cache when any required part
// is missing, so a request that reaches the cache has all of them.
func (rt *Route) trustsCredentials() bool {
	for _, p := range rt.keyParts {
		if !p.optional {
			return true
		}
	}
	return false
}

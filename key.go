package rediscache

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/http"
	"path"
	"sort"
	"strings"
)

// pathMatcher matches a normalised request path against a route pattern.
type pathMatcher struct {
	pattern string
	prefix  string // set for "/prefix*" patterns
	glob    bool
}

func compilePathPattern(p string) (pathMatcher, error) {
	if p == "" {
		return pathMatcher{}, fmt.Errorf("empty path pattern")
	}
	if !strings.HasPrefix(p, "/") && !strings.HasPrefix(p, "*") {
		return pathMatcher{}, fmt.Errorf("path pattern %q must start with '/' or '*'", p)
	}
	m := pathMatcher{pattern: p}
	body := strings.TrimSuffix(p, "*")
	switch {
	case !strings.ContainsAny(body, "*?["):
		if body != p {
			m.prefix = body
		}
	default:
		if strings.Count(p, "[") != strings.Count(p, "]") {
			return pathMatcher{}, fmt.Errorf("path pattern %q has an unbalanced '['", p)
		}
		m.glob = true
	}
	return m, nil
}

func (m pathMatcher) match(p string) bool {
	switch {
	case m.glob:
		return globMatch(m.pattern, p)
	case m.prefix != "":
		return strings.HasPrefix(p, m.prefix)
	default:
		return p == m.pattern
	}
}

// normalizedPath returns the cleaned request path used both for route
// matching and for the key, and whether the request's own path was already
// in that form. Requests with dot segments, doubled slashes or unusual
// percent-encoding are not cached: the upstream might read them differently
// from the clean path they would be stored under.
func normalizedPath(r *http.Request) (string, bool) {
	p := r.URL.Path
	if p == "" {
		return "/", r.URL.RawPath == ""
	}
	clean := path.Clean(p)
	if strings.HasSuffix(p, "/") && clean != "/" {
		clean += "/"
	}
	return clean, clean == p && r.URL.RawPath == ""
}

// sortedQuery orders query parameters by name, keeping the order of
// repeated names and their encoding as sent.
func sortedQuery(raw string) string {
	if raw == "" || !strings.Contains(raw, "&") {
		return raw
	}
	parts := strings.Split(raw, "&")
	sort.SliceStable(parts, func(i, j int) bool {
		ki, _, _ := strings.Cut(parts[i], "=")
		kj, _, _ := strings.Cut(parts[j], "=")
		return ki < kj
	})
	return strings.Join(parts, "&")
}

func requestScheme(r *http.Request) string {
	if r.TLS != nil {
		return "https"
	}
	return "http"
}

// escapeKeyPart makes a user-controlled value safe in the readable part of a
// key: anything outside a small safe set is percent-encoded, so ':' cannot
// forge a key segment and '*?[]' can never widen a pattern purge. The result
// is bounded; the hashed tail carries the full value.
func escapeKeyPart(s string) string {
	const hexDigits = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s) && b.Len() < maxKeyPartLength; i++ {
		c := s[i]
		if isKeySafe(c) {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hexDigits[c>>4])
		b.WriteByte(hexDigits[c&15])
	}
	out := b.String()
	if len(out) > maxKeyPartLength {
		out = out[:maxKeyPartLength]
	}
	return out
}

func isKeySafe(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
		c == '-' || c == '_' || c == '.' || c == '~' || c == '@' || c == '+' || c == '='
}

// keyHasher hashes a sequence of length-prefixed fields, so that no choice
// of field contents can make two different sequences collide. Fields are
// gathered in one buffer and hashed at once, which costs no allocation for
// keys of ordinary size.
type keyHasher struct {
	buf     []byte
	scratch [256]byte
}

func (k *keyHasher) add(s string) {
	if k.buf == nil {
		k.buf = k.scratch[:0]
	}
	k.buf = binary.AppendUvarint(k.buf, uint64(len(s)))
	k.buf = append(k.buf, s...)
}

// sum returns the first n bytes of the SHA-256 of the fields, in hex.
func (k *keyHasher) sum(n int) string {
	digest := sha256.Sum256(k.buf)
	var out [64]byte
	hex.Encode(out[:], digest[:n])
	return string(out[:2*n])
}

// requestKey is everything the handler derives from a cacheable request.
type requestKey struct {
	primary string // entry key, or the key of a Vary index
	uriGen  string // generation key of the target URI
	keyPart string // evaluated key template (identity), unescaped
}

// buildKey derives the entry key of a GET (or HEAD, which shares it):
// namespace, route and escaped key part as a readable prefix, then a hash
// of scheme, host, path, sorted query, key part and the route's Vary
// headers.
func (h *Handler) buildKey(r *http.Request, rt *Route, normPath, keyPart string) requestKey {
	return h.buildKeyFrom(r, rt, normPath, evaluatedKey{readable: keyPart, values: []string{keyPart}})
}

// buildKeyFrom is buildKey with each of the key template's placeholders
// hashed on its own, with its length.
func (h *Handler) buildKeyFrom(r *http.Request, rt *Route, normPath string, ek evaluatedKey) requestKey {
	keyPart := ek.readable
	host := strings.ToLower(r.Host)
	query := sortedQuery(r.URL.RawQuery)
	var kh keyHasher
	kh.add(requestScheme(r))
	kh.add(host)
	kh.add(normPath)
	kh.add(query)
	for _, v := range ek.values {
		kh.add(v)
	}
	// Requests with credentials the key does not capture share entries only
	// among themselves, and only what the origin marked shareable (§3.5).
	if !rt.trustsCredentials() && hasHeader(r.Header, "Authorization") {
		kh.add("authenticated")
	}
	for _, name := range rt.Vary {
		kh.add(name)
		kh.add(headerValue(r, name))
	}
	readable := "_"
	if keyPart != "" {
		readable = escapeKeyPart(keyPart)
	}
	return requestKey{
		primary: h.Namespace + ":" + rt.Name + ":" + readable + ":" + kh.sum(16),
		uriGen:  h.uriGenKey(requestScheme(r), host, normPath, query),
		keyPart: keyPart,
	}
}

// variantKey is the key of one Vary variant under a Vary index.
func variantKey(primary, epoch string, names []string, r *http.Request) string {
	var kh keyHasher
	kh.add(epoch)
	for _, name := range names {
		kh.add(name)
		kh.add(headerValue(r, name))
	}
	return primary + ":v:" + kh.sum(12)
}

// Generation keys. Route names cannot start with '_', so these never
// collide with entry keys.
func (h *Handler) allGenKey() string { return allGenKeyOf(h.Namespace) }

// allGenKeyOf is the namespace-wide generation of namespace ns.
func allGenKeyOf(ns string) string { return ns + ":_g:all" }

// runKeyOf records the Redis run_id namespace ns last saw (see checkRestart).
func runKeyOf(ns string) string { return ns + ":_g:run" }

// recentPurgesKey holds the recent pattern and key purges, which guarded
// writes check (see storeGuard). Entries never record it.
func (h *Handler) recentPurgesKey() string        { return h.Namespace + ":_g:purged" }
func (h *Handler) routeGenKey(name string) string { return h.Namespace + ":_g:r:" + name }
func (h *Handler) tagGenKey(tag string) string {
	return h.Namespace + ":_g:t:" + escapeKeyPart(tag) + ":" + shortHash(tag)
}

// uriGenKey is the generation of one target URI. The host is normalised
// here, not by the callers: a GET's key (whose request was sanitised), a
// mutation, its Location and the PURGE method (whose requests were not)
// must all name the same generation, or a purge is lost.
func (h *Handler) uriGenKey(scheme, host, normPath, query string) string {
	var kh keyHasher
	kh.add(scheme)
	kh.add(normalizeHost(host))
	kh.add(normPath)
	kh.add(query)
	return h.Namespace + ":_g:u:" + kh.sum(16)
}

func (h *Handler) lockKey(primary string) string {
	return h.Namespace + ":_l:" + shortHash(primary)
}

func shortHash(s string) string {
	var kh keyHasher
	kh.add(s)
	return kh.sum(8)
}

// isEntryKey reports whether a key under the namespace holds an entry
// rather than generation or lock bookkeeping.
func (h *Handler) isEntryKey(key string) bool {
	rest, ok := strings.CutPrefix(key, h.Namespace+":")
	return ok && !strings.HasPrefix(rest, "_")
}

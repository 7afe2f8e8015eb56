package rediscache

// The rules of HTTP caching that this cache applies, as small pure
// functions: RFC 9111 (caching), RFC 9213 (targeted cache control) and the
// parts of RFC 9110 (dates, validators, conditional requests) a cache
// needs. Nothing here touches a request's path through the handler; the
// handler asks these functions and acts on the answer.

import (
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"
)

// maxDeltaSeconds is the largest delta-seconds value a cache must handle;
// anything larger counts as this (RFC 9111 §1.2.2).
const maxDeltaSeconds = 1<<31 - 1

// Heuristic freshness (RFC 9111 §4.2.2) defaults: 10% of the time since
// Last-Modified, as Apache Traffic Server and httpd use, capped at a day.
const (
	defaultHeuristicPercent = 10
	heuristicLimit          = 24 * time.Hour
)

// ---------------------------------------------------------------------------
// Cache-Control (RFC 9111 §5.2)
// ---------------------------------------------------------------------------

// cacheControl is a set of parsed cache directives: names in lower case,
// with their argument (unquoted) if any.
type cacheControl map[string]string

func (cc cacheControl) has(name string) bool { _, ok := cc[name]; return ok }

func (cc cacheControl) get(name string) (string, bool) {
	v, ok := cc[name]
	return v, ok
}

func (cc cacheControl) seconds(name string) time.Duration {
	if v, ok := cc[name]; ok {
		return parseSeconds(v)
	}
	return 0
}

// parseCacheControl parses Cache-Control field lines (RFC 9111 §5.2):
// cache-directive = token [ "=" ( token / quoted-string ) ]. A member that
// does not follow that grammar (such as "max-age = 5") is ignored. When a
// directive repeats with different arguments, the most conservative one
// counts (§4.2.1 allows the first or "stale"; the smaller lifetime is
// between the two).
func parseCacheControl(values []string) cacheControl {
	cc := cacheControl{}
	for _, v := range values {
		for _, member := range splitQuotedList(v) {
			name, arg, ok := parseDirective(member)
			if !ok {
				continue
			}
			if prev, dup := cc[name]; dup {
				arg = conservativeArg(name, prev, arg)
			}
			cc[name] = arg
		}
	}
	return cc
}

// splitQuotedList splits a field value at the commas that are not inside a
// quoted-string (RFC 9110 §5.6.1, §5.6.4), trimming whitespace.
func splitQuotedList(v string) []string {
	var out []string
	start, quoted := 0, false
	for i := 0; i < len(v); i++ {
		switch c := v[i]; {
		case c == '\\' && quoted:
			i++
		case c == '"':
			quoted = !quoted
		case c == ',' && !quoted:
			out = appendTrimmed(out, v[start:i])
			start = i + 1
		}
	}
	return appendTrimmed(out, v[start:])
}

func appendTrimmed(out []string, s string) []string {
	if s = strings.Trim(s, " \t"); s != "" {
		out = append(out, s)
	}
	return out
}

// parseDirective reads one cache-directive, lower-casing its name and
// unquoting its argument.
func parseDirective(member string) (name, arg string, ok bool) {
	name, arg, hasArg := strings.Cut(member, "=")
	if !isToken(name) {
		return "", "", false
	}
	name = strings.ToLower(name)
	if !hasArg {
		return name, "", true
	}
	if isToken(arg) {
		return name, arg, true
	}
	if unq, ok := unquote(arg); ok {
		return name, unq, true
	}
	return "", "", false
}

// conservativeArg chooses between two arguments of a repeated directive:
// the shorter lifetime or staleness allowance, the longer min-fresh.
func conservativeArg(name, a, b string) string {
	switch name {
	case "max-age", "s-maxage", "stale-while-revalidate", "stale-if-error", "max-stale":
		if parseSeconds(b) < parseSeconds(a) {
			return b
		}
		return a
	case "min-fresh":
		if parseSeconds(b) > parseSeconds(a) {
			return b
		}
		return a
	}
	return a
}

// isToken reports whether s is a non-empty token (RFC 9110 §5.6.2).
func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isTchar(s[i]) {
			return false
		}
	}
	return true
}

func isTchar(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}

// unquote reads a quoted-string (RFC 9110 §5.6.4) that is all of s.
func unquote(s string) (string, bool) {
	if len(s) < 2 || s[0] != '"' || s[len(s)-1] != '"' {
		return "", false
	}
	var b strings.Builder
	for i := 1; i < len(s)-1; i++ {
		c := s[i]
		switch {
		case c == '\\' && i+1 < len(s)-1:
			i++
			b.WriteByte(s[i])
		case c == '"' || c == '\\':
			return "", false
		default:
			b.WriteByte(c)
		}
	}
	return b.String(), true
}

// parseSeconds reads a directive's delta-seconds argument; anything invalid
// is zero (so a lifetime is stale), an overflow saturates (§1.2.2).
func parseSeconds(v string) time.Duration {
	if unq, ok := unquote(v); ok {
		v = unq
	}
	n, ok := parseDeltaSeconds(strings.TrimSpace(v))
	if !ok {
		return 0
	}
	return n
}

// parseDeltaSeconds reads delta-seconds = 1*DIGIT strictly (RFC 9111
// §1.2.2), saturating at 2^31-1 seconds.
func parseDeltaSeconds(v string) (time.Duration, bool) {
	if v == "" {
		return 0, false
	}
	var n int64
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		if n <= maxDeltaSeconds {
			n = n*10 + int64(c-'0')
		}
	}
	return time.Duration(min(n, maxDeltaSeconds)) * time.Second, true
}

// ---------------------------------------------------------------------------
// Targeted fields (RFC 9213)
// ---------------------------------------------------------------------------

// defaultTargetedFields is the targeted field list of a cache that is a CDN
// to its origin (RFC 9213 §3).
var defaultTargetedFields = []string{"CDN-Cache-Control"}

// responseDirectives returns the directives that govern this cache's use
// of a response: those of the first targeted field, in the configured
// order, whose value is valid and non-empty, else Cache-Control (RFC 9213
// §2.2). targeted reports the former, in which case Expires is ignored
// too.
func responseDirectives(hdr http.Header, targets []string) (cc cacheControl, targeted bool) {
	for _, name := range targets {
		if values := hdr.Values(name); len(values) > 0 {
			if cc, ok := parseTargeted(values); ok {
				return cc, true
			}
		}
	}
	return parseCacheControl(hdr.Values("Cache-Control")), false
}

// parseTargeted reads a targeted field, a Structured Field Dictionary (RFC
// 9213 §2.1, RFC 8941 §3.2). ok is false when it is empty or fails to
// parse, and the field is then ignored as a whole. A directive whose value
// has the wrong type (max-age="10") is ignored on its own.
func parseTargeted(values []string) (cacheControl, bool) {
	members, ok := parseSFDictionary(strings.Join(values, ", "))
	if !ok || len(members) == 0 {
		return nil, false
	}
	cc := cacheControl{}
	for _, m := range members {
		switch m.name {
		case "max-age", "s-maxage", "stale-while-revalidate", "stale-if-error":
			if m.kind == sfInteger && !strings.HasPrefix(m.value, "-") {
				cc[m.name] = m.value
			}
		default:
			// Boolean directives; no-cache and private may name fields
			// in an Inner List (qualified forms), read as unqualified.
			if (m.kind == sfBoolean && m.value == "1") || m.kind == sfInnerList {
				cc[m.name] = ""
			}
		}
	}
	return cc, true
}

// ---------------------------------------------------------------------------
// Age (RFC 9111 §5.1) and freshness (§4.2)
// ---------------------------------------------------------------------------

// ageValue reads the Age field: from a list, only the first member counts
// (RFC 9111 §5.1). An invalid value (not a non-negative integer: "old",
// "7200a", "-1", "7200.0") means an age this cache cannot know. §5.1 lets a
// cache ignore it, but a shared cache that did would serve as fresh what
// another cache may have held for hours, so it counts as the largest age:
// the response is stale, and with a validator it is revalidated, which is
// what the published conformance suite expects of `Age: old, 0`.
func ageValue(values []string) time.Duration {
	if len(values) == 0 {
		return 0
	}
	first, _, _ := strings.Cut(values[0], ",")
	n, ok := parseDeltaSeconds(strings.Trim(first, " \t"))
	if !ok {
		return maxDeltaSeconds * time.Second
	}
	return n
}

// initialAge is RFC 9111 §4.2.3's corrected_initial_age.
func initialAge(hdr http.Header, requestTime, responseTime time.Time) time.Duration {
	var apparent time.Duration
	if d, ok := parseHTTPDate(hdr.Get("Date")); ok {
		// Date has one-second resolution: compare at that resolution,
		// or every response would look up to a second old on arrival.
		apparent = max(0, responseTime.Truncate(time.Second).Sub(d))
	}
	corrected := ageValue(hdr.Values("Age")) + responseTime.Sub(requestTime)
	return max(apparent, corrected)
}

// explicitFreshness is the freshness lifetime the origin gave a shared
// cache (RFC 9111 §4.2.1): s-maxage, else max-age, else Expires minus
// Date. explicit is false when it gave none. An invalid Expires is a
// lifetime of zero (§5.3). expires is nil when a targeted field decided.
func explicitFreshness(cc cacheControl, expires []string, date time.Time) (lifetime time.Duration, explicit bool) {
	if v, ok := cc.get("s-maxage"); ok {
		return parseSeconds(v), true
	}
	if v, ok := cc.get("max-age"); ok {
		return parseSeconds(v), true
	}
	if len(expires) == 0 {
		return 0, false
	}
	exp, ok := expiresTime(expires)
	if !ok {
		return 0, true
	}
	return max(0, exp.Sub(date)), true
}

// expiresTime reads the Expires field (RFC 9111 §5.3). Several field lines
// make it invalid, as does anything but an HTTP-date.
func expiresTime(values []string) (time.Time, bool) {
	if len(values) != 1 {
		return time.Time{}, false
	}
	return parseHTTPDate(values[0])
}

// heuristicallyCacheable reports whether a status may get a heuristic
// freshness lifetime (RFC 9110 §15.1).
func heuristicallyCacheable(status int) bool {
	switch status {
	case 200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501:
		return true
	}
	return false
}

// heuristicFreshness is a fraction (percent) of the time between
// Last-Modified and Date, capped at limit (RFC 9111 §4.2.2).
func heuristicFreshness(lastModified, date time.Time, percent int, limit time.Duration) time.Duration {
	since := date.Sub(lastModified)
	if since <= 0 || percent <= 0 {
		return 0
	}
	return min(since/100*time.Duration(percent), limit)
}

// storableStatus reports whether a response with this status may be
// stored at all (RFC 9111 §3): a final status, and not 206 or 304, since
// only complete responses are stored.
func storableStatus(status int) bool {
	return status >= 200 && status != 206 && status != 304
}

// understoodStatus reports whether this cache knows a final status code's
// semantics (RFC 9110 §15), which storing it requires when the response
// says must-understand (RFC 9111 §3, §5.2.2.3).
func understoodStatus(status int) bool {
	switch {
	case status >= 200 && status <= 205,
		status >= 300 && status <= 303, status == 305, status == 307, status == 308,
		status >= 400 && status <= 417, status == 421, status == 422,
		status == 426, status == 428, status == 429, status == 431, status == 451,
		status >= 500 && status <= 505, status == 511:
		return true
	}
	return false
}

// isErrorStatus reports whether a status is a server error, to which a
// route's ttl never applies and which is never served stale. Client errors
// such as 404 and 410 are the negative caching operators list in status.
func isErrorStatus(status int) bool { return status >= 500 }

// ---------------------------------------------------------------------------
// Conditional requests (RFC 9110 §13)
// ---------------------------------------------------------------------------

// notModified evaluates a client's conditional GET against a stored
// response (RFC 9110 §13.2.2: If-None-Match wins over If-Modified-Since,
// which compares with Last-Modified, or Date when there is none, §13.1.3).
func notModified(r *http.Request, stored http.Header) bool {
	if inm := r.Header.Values("If-None-Match"); len(inm) > 0 {
		return etagMatches(strings.Join(inm, ", "), stored.Get("ETag"))
	}
	since, ok := parseHTTPDate(r.Header.Get("If-Modified-Since"))
	if !ok {
		return false
	}
	lm := stored.Get("Last-Modified")
	if lm == "" {
		lm = stored.Get("Date")
	}
	modified, ok := parseHTTPDate(lm)
	return ok && !modified.After(since)
}

// etagMatches is If-None-Match's weak comparison (RFC 9110 §8.8.3.2,
// §13.1.2) of a list of entity tags, or "*", against a stored ETag. An
// unquoted or malformed tag never matches.
func etagMatches(header, etag string) bool {
	stored, _, ok := parseEntityTag(etag)
	for _, candidate := range splitQuotedList(header) {
		if candidate == "*" {
			return etag != ""
		}
		if tag, _, valid := parseEntityTag(candidate); ok && valid && tag == stored {
			return true
		}
	}
	return false
}

// strongMatch is the strong comparison (RFC 9110 §8.8.3.2): both tags
// strong and identical.
func strongMatch(a, b string) bool {
	ta, weakA, okA := parseEntityTag(a)
	tb, weakB, okB := parseEntityTag(b)
	return okA && okB && !weakA && !weakB && ta == tb
}

// parseEntityTag reads entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE (RFC
// 9110 §8.8.3), returning its opaque tag with the quotes.
func parseEntityTag(s string) (tag string, weak, ok bool) {
	s = strings.Trim(s, " \t")
	if rest, w := strings.CutPrefix(s, "W/"); w {
		s, weak = rest, true
	}
	if len(s) < 2 || s[0] != '"' || s[len(s)-1] != '"' || strings.Contains(s[1:len(s)-1], `"`) {
		return "", false, false
	}
	return s, weak, true
}

// ---------------------------------------------------------------------------
// Vary (RFC 9111 §4.1)
// ---------------------------------------------------------------------------

// normalizeWeightedList normalises an Accept-Encoding or Accept-Language
// value for Vary matching (RFC 9111 §4.1 allows normalising whitespace,
// case and order where the grammar says they are equivalent): both are
// lists of case-insensitive tokens with weights (RFC 9110 §12.4.2, §12.5.3,
// §12.5.4), so members are lower-cased with the whitespace inside them
// removed. Members are then ordered by weight, highest first; with
// anyOrder (content codings, where order carries no meaning), members of
// equal weight are sorted too, while languages of equal weight keep the
// client's order, which a language matcher may use.
func normalizeWeightedList(values []string, anyOrder bool) string {
	type member struct {
		text   string
		weight float64
	}
	var members []member
	for _, v := range values {
		for _, m := range strings.Split(v, ",") {
			m = strings.ToLower(strings.Join(strings.Fields(m), ""))
			if m == "" {
				continue
			}
			members = append(members, member{text: m, weight: memberWeight(m)})
		}
	}
	sort.SliceStable(members, func(i, j int) bool {
		if members[i].weight != members[j].weight {
			return members[i].weight > members[j].weight
		}
		return anyOrder && members[i].text < members[j].text
	})
	texts := make([]string, len(members))
	for i, m := range members {
		texts[i] = m.text
	}
	return strings.Join(texts, ", ")
}

// memberWeight reads a list member's q parameter (default 1), already
// lower-cased and without whitespace.
func memberWeight(m string) float64 {
	_, params, _ := strings.Cut(m, ";")
	for _, p := range strings.Split(params, ";") {
		if v, ok := strings.CutPrefix(p, "q="); ok {
			if q, err := strconv.ParseFloat(v, 64); err == nil && q >= 0 && q <= 1 {
				return q
			}
		}
	}
	return 1
}

// ---------------------------------------------------------------------------
// Range requests (RFC 9110 §14, RFC 9111 §3.4)
// ---------------------------------------------------------------------------

// byteRange is a satisfiable range of a representation, both ends included.
type byteRange struct{ first, last int64 }

// rangeOutcome is what a Range header asks of a stored representation.
type rangeOutcome int

const (
	rangeIgnored       rangeOutcome = iota // answer with the whole 200
	rangeSatisfiable                       // answer with one part, 206
	rangeUnsatisfiable                     // answer 416
)

// selectRange evaluates a Range header against a representation of size
// bytes (RFC 9110 §14.1.2, §14.2). An invalid header or another unit is
// ignored. Several satisfiable ranges are answered with the whole
// representation, which §14.2 allows, rather than multipart/byteranges.
func selectRange(header string, size int64) (byteRange, rangeOutcome) {
	unit, set, ok := strings.Cut(header, "=")
	if !ok || !strings.EqualFold(strings.TrimSpace(unit), "bytes") {
		return byteRange{}, rangeIgnored
	}
	var found []byteRange
	specs := 0
	for _, spec := range strings.Split(set, ",") {
		if spec = strings.Trim(spec, " \t"); spec == "" {
			continue
		}
		specs++
		br, satisfiable, valid := parseRangeSpec(spec, size)
		if !valid {
			return byteRange{}, rangeIgnored
		}
		if satisfiable {
			found = append(found, br)
		}
	}
	switch {
	case specs == 0:
		return byteRange{}, rangeIgnored
	case len(found) == 0:
		return byteRange{}, rangeUnsatisfiable
	case len(found) > 1:
		return byteRange{}, rangeIgnored
	}
	return found[0], rangeSatisfiable
}

// parseRangeSpec reads int-range ("first-[last]") or suffix-range
// ("-length") and clips it to the representation.
func parseRangeSpec(spec string, size int64) (br byteRange, satisfiable, valid bool) {
	first, last, ok := strings.Cut(spec, "-")
	if !ok {
		return byteRange{}, false, false
	}
	if first == "" {
		n, ok := parseRangeInt(last)
		if !ok {
			return byteRange{}, false, false
		}
		if n == 0 || size == 0 {
			return byteRange{}, false, true
		}
		return byteRange{first: max(0, size-n), last: size - 1}, true, true
	}
	f, ok := parseRangeInt(first)
	if !ok {
		return byteRange{}, false, false
	}
	l := int64(1<<63 - 1)
	if last != "" {
		if l, ok = parseRangeInt(last); !ok || l < f {
			return byteRange{}, false, false
		}
	}
	if f >= size {
		return byteRange{}, false, true
	}
	return byteRange{first: f, last: min(l, size-1)}, true, true
}

// parseRangeInt reads 1*DIGIT, saturating instead of overflowing.
func parseRangeInt(s string) (int64, bool) {
	if s == "" {
		return 0, false
	}
	var n int64
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
		if n < (1<<63-1)/10-9 {
			n = n*10 + int64(s[i]-'0')
		}
	}
	return n, true
}

// ifRangeMatches evaluates If-Range against a stored response (RFC 9110
// §13.1.5): an entity-tag must match the stored ETag strongly; a date must
// equal a Last-Modified that is a strong validator, at least a second
// before the response's Date (§8.8.2.2).
func ifRangeMatches(ifRange string, stored http.Header) bool {
	ifRange = strings.Trim(ifRange, " \t")
	if strings.HasPrefix(ifRange, `"`) || strings.HasPrefix(ifRange, "W/") {
		return strongMatch(ifRange, stored.Get("ETag"))
	}
	since, ok1 := parseHTTPDate(ifRange)
	lm, ok2 := parseHTTPDate(stored.Get("Last-Modified"))
	date, ok3 := parseHTTPDate(stored.Get("Date"))
	return ok1 && ok2 && ok3 && lm.Equal(since) && date.Sub(lm) >= time.Second
}

package rediscache

import (
	"net/http"
	"slices"
	"strings"
)

// defaultTagHeaders are the response fields through which an upstream tags
// its answers when no tags_header is configured: Fastly's and Varnish
// xkey's Surrogate-Key (tags separated by spaces), Cloudflare's Cache-Tag
// (commas) and this module's X-Cache-Tags (commas).
var defaultTagHeaders = []string{"Surrogate-Key", "Cache-Tag", "X-Cache-Tags"}

// compileTagHeaders settles the set of tag fields: the legacy single
// TagsHeader and the TagsHeaders list together, or the default set when
// neither is given.
func (h *Handler) compileTagHeaders() {
	var names []string
	if h.TagsHeader != "" {
		names = append(names, h.TagsHeader)
	}
	names = append(names, h.TagsHeaders...)
	if len(names) == 0 {
		names = defaultTagHeaders
	}
	h.tagHeaders = h.tagHeaders[:0]
	seen := make(map[string]bool, len(names))
	for _, name := range names {
		name = http.CanonicalHeaderKey(strings.TrimSpace(name))
		if name != "" && !seen[name] {
			seen[name] = true
			h.tagHeaders = append(h.tagHeaders, name)
		}
	}
}

// spaceSeparatedTags reports whether a tag field separates its tags with
// whitespace (Surrogate-Key) rather than commas.
func spaceSeparatedTags(name string) bool {
	return strings.EqualFold(name, "Surrogate-Key")
}

// splitTags splits the values of one tag field into tags.
func splitTags(name string, values []string) []string {
	if !spaceSeparatedTags(name) {
		return splitList(values)
	}
	var out []string
	for _, v := range values {
		out = append(out, strings.Fields(v)...)
	}
	return out
}

// responseTags returns the tags an upstream response names in any of the
// configured tag fields, without duplicates.
func (h *Handler) responseTags(hdr http.Header) []string {
	var out []string
	for _, name := range h.tagHeaders {
		for _, tag := range splitTags(name, hdr.Values(name)) {
			if !slices.Contains(out, tag) {
				out = append(out, tag)
			}
		}
	}
	return out
}

// stripTagHeaders removes every configured tag field from a response to a
// client.
func (h *Handler) stripTagHeaders(hdr http.Header) {
	for _, name := range h.tagHeaders {
		hdr.Del(name)
	}
}

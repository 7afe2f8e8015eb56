package rediscache

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// checkInvalidatesItem checks one item of a route's invalidates list: a
// route name, or "tag:" and a tag template.
func checkInvalidatesItem(item string) error {
	tpl, isTag := strings.CutPrefix(item, "tag:")
	switch {
	case isTag && strings.TrimSpace(tpl) == "":
		return fmt.Errorf("invalidates %q: a tag template needs a tag after 'tag:'", item)
	case isTag && strings.Count(tpl, "{") != strings.Count(tpl, "}"):
		return fmt.Errorf("invalidates %q: unbalanced braces in the tag template", item)
	case !isTag && !routeNamePattern.MatchString(item):
		return fmt.Errorf("invalidates %q: not a route name (tag templates start with 'tag:')", item)
	}
	return nil
}

// invalidationTagGens evaluates a route's invalidates tag templates with
// the mutation's placeholders and returns the generations of the tags. A
// template with an empty or unknown placeholder yields nothing: purging
// "user:" would hit whatever every anonymous request shares.
func (h *Handler) invalidationTagGens(r *http.Request, rt *Route) []string {
	if len(rt.invalTags) == 0 {
		return nil
	}
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if repl == nil {
		return nil
	}
	var gens []string
	for _, tpl := range rt.invalTags {
		tag, err := repl.ReplaceOrErr(tpl, true, true)
		if err != nil {
			continue
		}
		if tag = strings.TrimSpace(tag); tag != "" {
			gens = append(gens, h.tagGenKey(tag))
		}
	}
	return gens
}

// errAtToken is d.Errf for a token read earlier: the error names that
// token's file and line rather than the dispenser's position.
func errAtToken(tok caddyfile.Token, format string, args ...any) error {
	d := caddyfile.NewDispenser([]caddyfile.Token{tok})
	d.Next()
	return d.Errf(format, args...)
}

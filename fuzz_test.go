package rediscache

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// FuzzDecodeEntry: no stored value, however corrupt or hostile, may panic
// the decoder; whatever decodes must re-encode to the same bytes.
func FuzzDecodeEntry(f *testing.F) {
	f.Add(sampleEntry().encode())
	f.Add((&entry{kind: kindVaryIndex, vary: []string{"Accept"}, varyEpoch: "e", header: http.Header{}}).encode())
	f.Add([]byte("RC\x01\x01"))
	f.Add([]byte(`{"data":"test"}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		e, err := decodeEntry(raw)
		if err != nil {
			return
		}
		if _, err := decodeEntry(e.encode()); err != nil {
			t.Fatalf("re-encoded entry does not decode: %v", err)
		}
	})
}

// FuzzCaddyfile: the parser returns an error or a handler, never panics,
// and whatever it accepts either validates or is rejected with an error.
func FuzzCaddyfile(f *testing.F) {
	f.Add("redis_cache {\n route a /a 1m\n}")
	f.Add("redis_cache {\n redis redis://127.0.0.1:1\n route a /a* {\n key {http.request.header.X}\n invalidates a\n }\n}")
	f.Add("redis_cache {\n route a /a 1m {\n ttl x\n }\n}")
	f.Add("redis_cache {\n breaker 3 1s\n status 200 404\n}")
	f.Fuzz(func(t *testing.T, input string) {
		h := new(Handler)
		if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input)); err != nil {
			return
		}
		h.setDefaults()
		_ = h.Validate()
	})
}

// FuzzBuildKey: hostile paths, queries and identities never panic the key
// builder, never put glob characters or unbounded text in the readable
// part, and never collide across identities.
func FuzzBuildKey(f *testing.F) {
	f.Add("/api/dashboard", "a=1&b=2", "user-123", "user-124")
	f.Add("/api/../x", "%zz", "*", "[a]")
	f.Add("/", "", "", "\x00")
	rt := &Route{Name: "r", Path: "/*", Key: "k", Vary: []string{"Accept"}}
	h := testHandler(rt)
	f.Fuzz(func(t *testing.T, p, query, user1, user2 string) {
		r, err := http.NewRequest("GET", "http://example.com/", nil)
		if err != nil {
			return
		}
		r.URL.Path = p
		r.URL.RawQuery = query
		norm, _ := normalizedPath(r)
		k1 := h.buildKey(r, rt, norm, user1)
		k2 := h.buildKey(r, rt, norm, user2)
		if user1 != user2 && k1.primary == k2.primary {
			t.Fatalf("identities %q and %q share key %q", user1, user2, k1.primary)
		}
		readable := strings.TrimPrefix(k1.primary, "ns:r:")
		if strings.ContainsAny(readable, "*?[]\\") {
			t.Fatalf("glob characters in key %q", k1.primary)
		}
		if len(k1.primary) > len("ns:r:")+maxKeyPartLength+1+32 {
			t.Fatalf("key too long: %d bytes", len(k1.primary))
		}
		_ = httptest.NewRecorder()
	})
}

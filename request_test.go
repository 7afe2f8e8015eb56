package rediscache

import (
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func TestHostileNormalizeHost(t *testing.T) {
	for in, want := range map[string]string{
		"APP.test": "app.test", "app.test.": "app.test", "App.Test.:8080": "app.test:8080",
		"[::1]:80": "[::1]:80", "127.0.0.1": "127.0.0.1", "": "",
	} {
		if got := normalizeHost(in); got != want {
			t.Errorf("normalizeHost(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestHostileOptionsParse(t *testing.T) {
	for _, tc := range []struct{ input, errHas string }{
		{"redis_cache {\n route m /m {\n key {a}:{b}\n key_optional {c}\n }\n}", `"{c}"`},
		{"redis_cache {\n route m /m {\n key_optional {b}\n }\n}", `"{b}"`},
		{"redis_cache {\n inflight_budget lots\n}", `"lots"`},
		{"redis_cache {\n strip_request_headers bad:name\n}", `"bad:name"`},
		{"redis_cache {\n route m /m {\n key {query.a}:{b}\n key_optional query.a\n }\n}", ""},
		{"redis_cache {\n inflight_budget 1MiB\n strip_request_headers X-Tenant\n}", ""},
	} {
		h := new(Handler)
		err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
		switch {
		case tc.errHas == "" && err != nil:
			t.Errorf("%q: %v", tc.input, err)
		case tc.errHas != "" && (err == nil || !strings.Contains(err.Error(), tc.errHas)):
			t.Errorf("%q: error %v, want one naming %s", tc.input, err, tc.errHas)
		}
	}
	h := &Handler{InflightBudget: -1}
	h.setDefaults()
	if err := h.Validate(); err == nil || !strings.Contains(err.Error(), "inflight_budget") {
		t.Errorf("negative inflight_budget: %v", err)
	}
}

func TestHostileKeyPartsInjective(t *testing.T) {
	rt := &Route{Name: "r", Path: "/*", Key: "{a}:{b}"}
	h := testHandler(rt)
	r1 := fuzzRequest("app.test", "/x", "", "", "")
	k1 := h.buildKeyFrom(r1, rt, "/x", evaluatedKey{readable: "a:b:c", values: []string{"a:b", "c"}})
	k2 := h.buildKeyFrom(r1, rt, "/x", evaluatedKey{readable: "a:b:c", values: []string{"a", "b:c"}})
	if k1.primary == k2.primary {
		t.Fatalf("placeholders a:b + c and a + b:c share key %s", k1.primary)
	}
}

func TestHostileGoSafeRecovers(t *testing.T) {
	core, logs := observer.New(zap.ErrorLevel)
	done := make(chan struct{})
	goSafe(zap.New(core), "test", func() {
		defer close(done)
		var m map[string]int
		m["boom"]++ // a nil map write panics
	})
	<-done
	deadline := time.Now().Add(10 * time.Second)
	for logs.Len() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if logs.Len() != 1 || logs.All()[0].ContextMap()["goroutine"] != "test" {
		t.Fatalf("panic not logged once with its goroutine name: %v", logs.All())
	}
}

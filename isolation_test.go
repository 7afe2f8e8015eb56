package rediscache

import (
	"fmt"
	"net/http"
	"testing"
)

// Caddy's header directive, deferred with ">", edits response header values
// in place, here with a per-request placeholder. The edit must stay in that
// one response: an entry served from the in-process tier, or the first
// response built from a fetched answer, must never carry one client's value
// into another client's response.
func TestHeaderEditsStayInOneResponse(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	u := newUpstream(t)
	u.Handle("/api/greeting", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("X-Greeting", "hello")
		w.Header().Set("Cache-Control", "max-age=60")
		_, _ = w.Write([]byte(`{"greeting":"hello"}`))
	})
	c := startCaddy(t, fmt.Sprintf(`	header >X-Greeting hello "hello {http.request.header.X-User}"
%s`, integSite(u, integRedis(r)+`
		local_cache 16MiB
		route api /api/* 1m`)))

	for i, user := range []string{"alice", "bob", "carol", "bob"} {
		resp, _ := c.Get("/api/greeting", "X-User: "+user)
		wantXC := "HIT"
		if i == 0 {
			wantXC = "MISS"
		}
		if got := resp.Header.Get("X-Cache"); got != wantXC {
			t.Fatalf("request %d (%s): X-Cache %q, want %q", i, user, got, wantXC)
		}
		if got, want := resp.Header.Get("X-Greeting"), "hello "+user; got != want {
			t.Fatalf("request %d (%s): X-Greeting %q, want %q: another request's edit reached the stored entry", i, user, got, want)
		}
	}
	if n := u.Calls("GET", "/api/greeting"); n != 1 {
		t.Fatalf("upstream called %d times, want 1", n)
	}
}

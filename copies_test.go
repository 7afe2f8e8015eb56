package rediscache

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"
)

// Validated copies (on by default with Redis): a Caddy that holds a decoded
// copy of an entry serves it only while Redis still holds that very entry.
// Whatever replaced or removed the entry in Redis (another instance, a
// purge, an operator) is what the next request sees.
func TestValidatedCopiesFollowRedis(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	u := newUpstream(t)
	site := integSite(u, integRedis(r)+`
		route content /api/content* 5m`)
	a := startCaddy(t, site)
	b := startCaddy(t, site)
	rc := r.Client()
	ctx := context.Background()
	const path = "/api/content/1"
	// Both instances use the same keys only for the same Host.
	const host = "Host: 127.0.0.1"

	first := integMissThenHit(t, a, u, path, host)
	st, raw := visGetStats(t, a)
	if n, _ := st.Stores[0].Copies["entries"].(float64); n < 1 {
		t.Fatalf("stats: no validated copy held after a hit: %s", raw)
	}

	// Another writer replaces the entry with the same generations.
	keys := integEntryKeys(r, "rcache", "content")
	if len(keys) != 1 {
		t.Fatalf("entry keys %v, want one", keys)
	}
	stored, err := rc.Get(ctx, keys[0]).Bytes()
	if err != nil {
		t.Fatal(err)
	}
	e, err := decodeEntry(stored)
	if err != nil {
		t.Fatal(err)
	}
	const replaced = `{"replaced":true}`
	e.body = []byte(replaced)
	ttl := rc.PTTL(ctx, keys[0]).Val()
	if err := rc.Set(ctx, keys[0], e.encode(), ttl).Err(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*caddyProc{a, b} {
		resp, body := c.Get(path, host)
		integExpect(t, "after the entry was replaced", resp, body, http.StatusOK, "HIT")
		if body != replaced {
			t.Fatalf("port %d served %q after Redis's entry was replaced with %q (first body %q)", c.HTTPPort, body, replaced, first)
		}
	}

	// a now holds the replacement: served from the copy, unchanged.
	resp, body := a.Get(path, host)
	integExpect(t, "again after the entry was replaced", resp, body, http.StatusOK, "HIT")
	if body != replaced {
		t.Fatalf("served %q from the copy of the replacement %q", body, replaced)
	}

	// Removed from Redis: a miss on the instance holding the copy.
	if err := rc.Del(ctx, keys[0]).Err(); err != nil {
		t.Fatal(err)
	}
	resp, body = a.Get(path, host)
	integExpect(t, "after the entry was deleted", resp, body, http.StatusOK, "MISS")
	if n := u.Calls("GET", "/api/content/1"); n != 2 {
		t.Fatalf("upstream called %d times, want 2", n)
	}

	// A pattern purge (deleting the entries) through the other instance.
	integMissThenHit(t, a, u, "/api/content/2", host)
	if code, out := b.Admin(http.MethodPost, "/redis_cache/purge", `{"pattern":"content:*"}`); code != http.StatusOK {
		t.Fatalf("purge: %d %s", code, out)
	}
	resp, body = a.Get("/api/content/2", host)
	integExpect(t, "after a purge on the other instance", resp, body, http.StatusOK, "MISS")

	// On a, the held copies were checked: unchanged once, replaced once,
	// and gone twice (the deletion, and the pattern purge).
	samples := visScrape(t, a)
	for outcome, want := range map[string]float64{"unchanged": 1, "replaced": 1, "gone": 2} {
		if got := visValue(t, samples, "caddy_redis_cache_validated_copy_checks_total", "outcome", outcome); got != want {
			t.Errorf("validated_copy_checks_total{outcome=%q} = %v, want %v", outcome, got, want)
		}
	}
}

// validated_copies off: every hit reads the whole entry; the stats say no
// copies are held.
func TestValidatedCopiesOff(t *testing.T) {
	t.Parallel()
	r := startRedis(t)
	u := newUpstream(t)
	c := startCaddy(t, integSite(u, integRedis(r)+`
		validated_copies off
		route content /api/content* 5m`))
	integMissThenHit(t, c, u, "/api/content/1")
	st, raw := visGetStats(t, c)
	if st.Stores[0].Copies != nil {
		t.Fatalf("stats show validated copies although they are off: %s", raw)
	}
}

// The store's tail check, on a single Redis and on a Cluster (where the
// entry and its generations live on different nodes): an unchanged value
// is reported as such without being read, a replaced one is read in full,
// a missing or foreign one is absent or corrupt.
func TestStoreTailCheck(t *testing.T) {
	t.Parallel()
	single := startRedis(t)
	cluster := startCluster(t)
	for name, urls := range map[string][]string{"single": {single.URL()}, "cluster": cluster.URLs()} {
		t.Run(name, func(t *testing.T) {
			s, err := newRedisStore(storeOptions{urls: urls, timeout: 5 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			defer s.close()
			ctx := context.Background()
			gens := []string{"t:_g:a", "t:_g:b"}
			if err := s.bump(ctx, false, time.Minute, gens[0]); err != nil {
				t.Fatal(err)
			}
			first := (&entry{kind: kindResponse, status: 200, body: []byte("first")}).encode()
			second := (&entry{kind: kindResponse, status: 200, body: []byte("second")}).encode()
			if err := s.set(ctx, "t:entry", first, time.Minute); err != nil {
				t.Fatal(err)
			}

			val, cur, unchanged, err := s.get(ctx, "t:entry", gens, entryTail(first))
			if err != nil || !unchanged || val != nil || cur[0] == genMissing || cur[1] != genMissing {
				t.Fatalf("unchanged value: val %q cur %v unchanged %v err %v", val, cur, unchanged, err)
			}
			if err := s.set(ctx, "t:entry", second, time.Minute); err != nil {
				t.Fatal(err)
			}
			val, cur, unchanged, err = s.get(ctx, "t:entry", gens, entryTail(first))
			if err != nil || unchanged || !bytes.Equal(val, second) || len(cur) != 2 {
				t.Fatalf("replaced value: val %q cur %v unchanged %v err %v", val, cur, unchanged, err)
			}
			val, _, unchanged, err = s.get(ctx, "t:missing", gens, entryTail(first))
			if err != nil || unchanged || val != nil {
				t.Fatalf("missing value: val %q unchanged %v err %v", val, unchanged, err)
			}
			if err := s.client.RPush(ctx, "t:list", "x").Err(); err != nil {
				t.Fatal(err)
			}
			val, _, unchanged, err = s.get(ctx, "t:list", gens, entryTail(first))
			if err != nil || unchanged {
				t.Fatalf("foreign value: val %q unchanged %v err %v", val, unchanged, err)
			}
			if _, err := decodeEntry(val); val != nil && err == nil {
				t.Fatalf("foreign value decoded as an entry")
			}
		})
	}
}

// setIf on a single Redis, for a small value (one Lua call) and a large one
// (staged with SET, then moved by Lua): stored only while the guard holds,
// with the entry's TTL, also when Redis has forgotten the scripts, and
// never leaving a staged key behind. A generation recorded as a birth is
// created with the entry; one that vanished refuses the write; a foreign
// value at a generation key is overwritten, not an error.
func TestStoreGuardedSet(t *testing.T) {
	t.Parallel()
	r, s := startRedisStore(t)
	ctx := context.Background()
	const gen = "t:_g:r:x"
	guard := func(val string) storeGuard {
		return storeGuard{gens: []genStamp{{key: gen, val: val}}, late: 1, lookupAt: time.Now().Add(-time.Second), patterns: "t:_g:purged", genTTL: time.Hour}
	}
	for _, size := range []int{100, stagedSetMinSize, 64 << 10} {
		value := bytes.Repeat([]byte{'v'}, size)
		key := fmt.Sprintf("t:entry:%d", size)
		if err := s.client.ScriptFlush(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		birth := newBirthGen()
		out, err := s.setIf(ctx, key, value, time.Minute, guard(birth))
		if err != nil || out != outcomeStored {
			t.Fatalf("size %d, new generation: outcome %v, err %v", size, out, err)
		}
		if got := s.client.Get(ctx, gen).Val(); got != birth {
			t.Fatalf("size %d: generation %q after the write, want the birth %q", size, got, birth)
		}
		got, err := s.client.Get(ctx, key).Bytes()
		if err != nil || !bytes.Equal(got, value) {
			t.Fatalf("size %d: stored %d bytes (err %v), want %d", size, len(got), err, size)
		}
		if ttl := s.client.PTTL(ctx, key).Val(); ttl < 50*time.Second || ttl > time.Minute {
			t.Fatalf("size %d: TTL %v, want about 1m", size, ttl)
		}
		if err := s.bump(ctx, false, time.Minute, gen); err != nil {
			t.Fatal(err)
		}
		out, err = s.setIf(ctx, key, []byte("newer"), time.Minute, guard(birth))
		if err != nil || out != outcomePurged {
			t.Fatalf("size %d, generation bumped: outcome %v, err %v", size, out, err)
		}
		if got, _ := s.client.Get(ctx, key).Bytes(); !bytes.Equal(got, value) {
			t.Fatalf("size %d: a write whose guard moved replaced the value", size)
		}
		bumped := s.client.Get(ctx, gen).Val()
		if err := s.client.Del(ctx, gen).Err(); err != nil {
			t.Fatal(err)
		}
		if out, err = s.setIf(ctx, key, []byte("newer"), time.Minute, guard(bumped)); err != nil || out != outcomeGenLost {
			t.Fatalf("size %d, generation gone: outcome %v, err %v", size, out, err)
		}
		if err := s.client.HSet(ctx, gen, "f", "v").Err(); err != nil {
			t.Fatal(err)
		}
		if out, err = s.setIf(ctx, key, value, time.Minute, guard(newBirthGen())); err != nil || out != outcomeStored {
			t.Fatalf("size %d, foreign generation: outcome %v, err %v", size, out, err)
		}
		if err := s.client.Del(ctx, gen).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if staged := r.Keys("*_staged*"); len(staged) != 0 {
		t.Fatalf("staged keys left behind: %v", staged)
	}
}

// A guarded write that waits (here: Redis paused) between being sent and
// running must still see a pattern purge made after its lookup: the window
// is anchored at the lookup, not at the moment the write was sent. The
// window used to be the time elapsed until sending, subtracted from the
// clock at run time, which the wait moved past the purge.
func TestStoreGuardSeesPurgesAfterLookupDespiteDelay(t *testing.T) {
	t.Parallel()
	r, s := startRedisStore(t)
	ctx := context.Background()
	lookupAt := time.Now()
	time.Sleep(20 * time.Millisecond)
	if err := s.rememberPurge(ctx, "t:_g:purged", "t:r:user-1:*"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	r.Pause(400 * time.Millisecond)
	g := storeGuard{gens: []genStamp{{key: "t:_g:r:r", val: newBirthGen()}}, late: 1, lookupAt: lookupAt, patterns: "t:_g:purged", genTTL: time.Hour}
	out, err := s.setIf(ctx, "t:r:user-1:abc", []byte("v"), time.Minute, g)
	if err != nil || out != outcomePatternPurged {
		t.Fatalf("write of an answer looked up before a pattern purge, delayed past it: outcome %v, err %v; want pattern-purged", out, err)
	}
	m := newMemoryStore(1 << 20)
	_ = m.rememberPurge(ctx, "", "t:r:user-1:*")
	g.lookupAt = time.Now().Add(-time.Second)
	if out, _ := m.setIf(ctx, "t:r:user-1:abc", []byte("v"), time.Minute, g); out != outcomePatternPurged {
		t.Fatalf("embedded store: outcome %v, want pattern-purged", out)
	}
}

// startRedisStore starts a redis-server and a store on it, closed with the
// test.
func startRedisStore(t *testing.T) (*redisServer, *redisStore) {
	t.Helper()
	r := startRedis(t)
	s, err := newRedisStore(storeOptions{urls: []string{r.URL()}, timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.close() })
	return r, s
}

package rediscache

import (
	"context"
	"net/url"
	"runtime"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// Redis connections: client options from the configured URLs, warming
// the pool, and noticing a restarted or failed-over server.

// warm opens the pool's first connections as soon as the store exists, so
// that the first burst of requests after a start or reload does not wait
// for dials and time out on its lookups.
func (rs *redisStore) warm() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for range warmConnections {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = rs.client.Ping(ctx).Err()
		}()
	}
	wg.Wait()
}

// warmConnections is how many connections are opened up front and kept idle.
const warmConnections = pipelineWorkers + 2

// checkRestart runs on every new connection. When the server's run_id
// differs from the one recorded in the namespace, Redis restarted (perhaps
// from an older snapshot) or failed over (perhaps to a lagging replica):
// generations may have gone back to values that purged entries recorded, so
// the namespace's generation is bumped, on this connection, before it
// serves anything. The record makes that happen once per restart, whichever
// Caddy connects first; other new connections of this Caddy wait for it.
func (rs *redisStore) checkRestart(ctx context.Context, cn *redis.Conn) error {
	raw, err := cn.Info(ctx, "server").Result()
	if err != nil {
		return nil // the command that needs the connection will tell
	}
	info := parseInfo(raw)
	if info["redis_mode"] == "sentinel" {
		return nil // a Sentinel holds no data; its masters are checked
	}
	id := info["run_id"]
	rs.runMu.Lock()
	defer rs.runMu.Unlock()
	if id == "" || id == rs.runID {
		return nil
	}
	var bumpErr error
	rs.namespaces.Range(func(ns, ttl any) bool {
		keys := []string{runKeyOf(ns.(string)), allGenKeyOf(ns.(string))}
		if err := restartScript.Run(ctx, cn, keys, id, ttl.(time.Duration).Milliseconds()).Err(); err != nil {
			bumpErr = err
		}
		return true
	})
	if bumpErr != nil {
		return bumpErr // try again on the next connection
	}
	rs.runID = id
	return nil
}

// restartScript records the server's run_id in a namespace and, when
// another was recorded, bumps the namespace's generation.
var restartScript = redis.NewScript(`
local prev = redis.pcall('GET', KEYS[1])
if prev == ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if type(prev) ~= 'string' then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('SET', KEYS[2], string.format('%d', now) .. ':0', 'PX', ARGV[2])
return 1
`)

// universalOptions turns the configured URLs into client options. Every URL
// must agree on credentials, TLS and database; the first one sets them.
func universalOptions(opts storeOptions) (*redis.UniversalOptions, error) {
	uo := &redis.UniversalOptions{
		MasterName:   opts.sentinelMaster,
		Protocol:     2,
		DialTimeout:  opts.timeout,
		ReadTimeout:  opts.timeout,
		WriteTimeout: opts.timeout,
		PoolTimeout:  opts.timeout,
		// Enough connections that a burst of concurrent lookups does not
		// queue for one and time out while Redis itself is fine.
		PoolSize:              max(64, 16*runtime.GOMAXPROCS(0)),
		MinIdleConns:          warmConnections,
		MaxRetries:            -1,
		DialerRetries:         1,
		ContextTimeoutEnabled: true,
		DisableIdentity:       true,
		MaintNotificationsConfig: &maintnotifications.Config{
			Mode: maintnotifications.ModeDisabled,
		},
	}
	for i, raw := range opts.urls {
		o, err := redis.ParseURL(stripClusterParam(raw))
		if err != nil {
			return nil, redisURLError(raw, err)
		}
		uo.Addrs = append(uo.Addrs, o.Addr)
		if wantsCluster(raw) {
			uo.IsClusterMode = true
		}
		if i == 0 {
			uo.Username, uo.Password, uo.DB, uo.TLSConfig = o.Username, o.Password, o.DB, o.TLSConfig
		}
	}
	if opts.username != "" {
		uo.Username = opts.username
	}
	if opts.password != "" {
		uo.Password = opts.password
	}
	if len(uo.Addrs) > 1 && opts.sentinelMaster == "" {
		uo.IsClusterMode = true
	}
	return uo, nil
}

func wantsCluster(raw string) bool {
	u, err := url.Parse(raw)
	return err == nil && u.Query().Get("cluster") == "true"
}

func stripClusterParam(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || !u.Query().Has("cluster") {
		return raw
	}
	q := u.Query()
	q.Del("cluster")
	u.RawQuery = q.Encode()
	return u.String()
}

// redactURL hides a password in a URL, for error messages.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "<unparseable URL>"
	}
	return u.Redacted()
}

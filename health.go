package rediscache

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// healthInterval is how often each shared store is probed with PING.
const healthInterval = time.Second

// healthProbe pings one store at provision (in the background, so a dead
// Redis does not hold up the config load) and then every healthInterval,
// so /redis_cache/health and /stats say whether it answers now, not only
// whether requests have failed lately. One goroutine per shared store,
// stopped when the store is destroyed.
type healthProbe struct {
	ping    func(context.Context) error // nil: nothing to probe (memory store)
	timeout time.Duration
	logger  *zap.Logger

	mu      sync.Mutex
	checked time.Time // zero until the first probe ended
	err     error
	latency time.Duration
	stop    context.CancelFunc
	done    chan struct{}
}

// newHealthProbe starts probing; ping nil means the store is always healthy.
func newHealthProbe(ping func(context.Context) error, timeout time.Duration, logger *zap.Logger) *healthProbe {
	p := &healthProbe{ping: ping, timeout: max(timeout, 500*time.Millisecond), logger: logger, done: make(chan struct{})}
	if ping == nil {
		close(p.done)
		return p
	}
	ctx, cancel := context.WithCancel(context.Background())
	p.stop = cancel
	goSafe(logger, "health probe", func() {
		defer close(p.done)
		t := time.NewTicker(healthInterval)
		defer t.Stop()
		for {
			p.probe(ctx)
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	})
	return p
}

// probe sends one PING and records its outcome, logging state changes.
func (p *healthProbe) probe(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	start := time.Now()
	err := p.ping(ctx)
	took := time.Since(start)
	cancel()
	if errors.Is(err, context.Canceled) {
		return // stopping
	}
	p.mu.Lock()
	first, wasOK := p.checked.IsZero(), p.err == nil
	p.checked, p.err, p.latency = time.Now(), err, took
	p.mu.Unlock()
	switch {
	case err != nil && (first || wasOK):
		p.logger.Warn("redis health probe: no answer to PING", zap.Error(err))
	case err == nil && !first && !wasOK:
		p.logger.Info("redis health probe: PING answered again")
	}
}

// status is the latest probe outcome. Before the first probe has ended,
// it probes once, so no answer is "healthy" merely for lack of a check.
func (p *healthProbe) status(ctx context.Context) (ok bool, checked time.Time, latency time.Duration, err error) {
	if p.ping == nil {
		return true, time.Time{}, 0, nil
	}
	p.mu.Lock()
	checked = p.checked
	p.mu.Unlock()
	if checked.IsZero() {
		p.probe(ctx)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.checked.IsZero() {
		return false, p.checked, 0, errors.New("not probed yet")
	}
	return p.err == nil, p.checked, p.latency, p.err
}

// close stops the probe and waits for its goroutine.
func (p *healthProbe) close() {
	if p == nil {
		return
	}
	if p.stop != nil {
		p.stop()
	}
	<-p.done
}

// storeHealth is the health of one shared store, as the admin API reports
// it: healthy only when the breaker is closed and the last PING answered.
func (g *guardedStore) storeHealth(ctx context.Context) (bool, map[string]any) {
	breakerOpen := g.breaker.isOpen.Load()
	out := map[string]any{"kind": g.backend.kind(), "breaker_open": breakerOpen}
	ok := !breakerOpen
	if g.probe != nil {
		pingOK, checked, latency, err := g.probe.status(ctx)
		ok = ok && pingOK
		if !checked.IsZero() {
			out["probed_at"] = checked.UTC().Format(time.RFC3339Nano)
			out["ping_ms"] = float64(latency.Microseconds()) / 1000
		}
		if err != nil {
			out["error"] = err.Error()
		}
	}
	out["healthy"] = ok
	return ok, out
}

// redisPing returns the probe's PING for a store backend, nil when it has
// nothing to probe.
func redisPing(backend store) func(context.Context) error {
	rs, ok := backend.(*redisStore)
	if !ok {
		return nil
	}
	return func(ctx context.Context) error { return rs.client.Ping(ctx).Err() }
}

// zapRedisLogger routes go-redis's own log lines (dial failures, pool
// notices) through Caddy's zap logger at debug level: the module's own
// breaker and probe warnings already report each state change once.
type zapRedisLogger struct{ logger *zap.Logger }

// Printf implements go-redis's internal.Logging.
func (l zapRedisLogger) Printf(_ context.Context, format string, v ...any) {
	l.logger.Debug(strings.TrimSpace(fmt.Sprintf(format, v...)))
}

var redisLoggerOnce sync.Once

// installRedisLogger replaces go-redis's process-wide logger (which writes
// plain text to stderr) once.
func installRedisLogger() {
	redisLoggerOnce.Do(func() {
		redis.SetLogger(zapRedisLogger{logger: caddy.Log().Named("redis_cache.go-redis")})
	})
}

// redisURLError describes a Redis URL that does not parse without
// repeating the URL, or its password, which the parser's error may quote.
func redisURLError(raw string, err error) error {
	msg := err.Error()
	msg = strings.ReplaceAll(msg, raw, "<url>")
	if i := strings.Index(raw, "://"); i >= 0 {
		rest := raw[i+3:]
		if at := strings.LastIndex(rest, "@"); at >= 0 {
			if _, pass, ok := strings.Cut(rest[:at], ":"); ok && pass != "" {
				msg = strings.ReplaceAll(msg, pass, "xxxxx")
			}
			msg = strings.ReplaceAll(msg, rest[:at], "xxxxx")
		}
	}
	return fmt.Errorf("redis %s: %s", redactURL(raw), msg)
}

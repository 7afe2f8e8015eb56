package rediscache

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/caddyserver/caddy/v2"
	"github.com/redis/go-redis/v9"
)

// redisStore keeps entries and generations in Redis: standalone, Cluster or
// Sentinel, through one UniversalClient.
type redisStore struct {
	client redis.UniversalClient
	name   string
	auto   *autoPipeline // nil on a Cluster

	// runID is the run_id of the Redis server last connected to; see
	// checkRestart.
	runMu      sync.Mutex
	runID      string
	namespaces *sync.Map // namespace -> generation TTL, of the handlers using this store
}

// scanBatch bounds how many keys one SCAN step returns and one UNLINK
// pipeline removes, so a pattern purge never blocks Redis for long.
const scanBatch = 500

func newRedisStore(opts storeOptions) (*redisStore, error) {
	uo, err := universalOptions(opts)
	if err != nil {
		return nil, err
	}
	rs := &redisStore{namespaces: new(sync.Map)}
	if !uo.IsClusterMode {
		uo.OnConnect = rs.checkRestart
	}
	client := redis.NewUniversalClient(uo)
	name := "redis"
	switch client.(type) {
	case *redis.ClusterClient:
		name = "redis-cluster"
	}
	if opts.sentinelMaster != "" {
		name = "redis-sentinel"
	}
	rs.client, rs.name = client, name
	if _, cluster := client.(*redis.ClusterClient); !cluster {
		rs.auto = newAutoPipeline(client, opts.timeout)
	}
	goSafe(caddy.Log().Named("http.handlers.redis_cache"), "connection warm-up", rs.warm)
	return rs, nil
}

func (s *redisStore) kind() string { return s.name }

func (s *redisStore) close() error {
	if s.auto != nil {
		s.auto.close()
	}
	return s.client.Close()
}

func (s *redisStore) get(ctx context.Context, key string, gens []string, tail []byte) ([]byte, []string, bool, error) {
	if tail == nil {
		val, cur, err := s.readValue(ctx, key, gens)
		return val, cur, false, err
	}
	cur, got, err := s.readTail(ctx, key, gens)
	switch {
	case err != nil:
		return nil, nil, false, err
	case got == string(tail):
		return nil, cur, true, nil
	case got == "":
		return nil, cur, false, nil // GETRANGE of a missing key
	}
	// Replaced since the caller's copy was read: one more round trip.
	val, _, err := s.readValue(ctx, key, nil)
	return val, cur, false, err
}

// errShortReply is a reply with fewer values than keys asked for: a proxy
// or server that is not quite Redis. A store failure, never a panic.
var errShortReply = errors.New("redis: reply has fewer values than keys")

// foreignTail stands for the tail of a key holding another type: it
// matches no entry's, so the value is read in full and found foreign.
const foreignTail = "foreign"

func (s *redisStore) readValue(ctx context.Context, key string, gens []string) ([]byte, []string, error) {
	if s.auto == nil {
		val, cur, _, err := s.clusterGet(ctx, key, gens, false)
		return val, cur, err
	}
	return s.mget(ctx, key, gens)
}

func (s *redisStore) readTail(ctx context.Context, key string, gens []string) ([]string, string, error) {
	if s.auto == nil {
		_, cur, tail, err := s.clusterGet(ctx, key, gens, true)
		return cur, tail, err
	}
	return s.gensAndTail(ctx, key, gens)
}

// gensAndTail reads the generations and the value's entryTail in one round
// trip. A key holding another type reads as changed.
func (s *redisStore) gensAndTail(ctx context.Context, key string, gens []string) ([]string, string, error) {
	var gensCmd *redis.SliceCmd
	cmd, err := s.auto.do(func(ctx context.Context, p redis.Pipeliner) redis.Cmder {
		if len(gens) > 0 {
			gensCmd = p.MGet(ctx, gens...)
		}
		return p.GetRange(ctx, key, -entryTailLen, -1)
	})
	if err != nil && !redis.HasErrorPrefix(err, "WRONGTYPE") {
		return nil, "", err
	}
	var cur []string
	if gensCmd != nil {
		if err := gensCmd.Err(); err != nil {
			return nil, "", err
		}
		cur = mgetGenValues(gensCmd.Val())
	}
	if err != nil {
		return cur, foreignTail, nil
	}
	return cur, cmd.(*redis.StringCmd).Val(), nil
}

// clusterGet is get on a Cluster, where the keys live in different slots:
// pipelined reads reach every node in parallel, where one MGET would fail
// with CROSSSLOT. With onlyTail, it reads the value's entryTail instead of
// the value.
func (s *redisStore) clusterGet(ctx context.Context, key string, gens []string, onlyTail bool) ([]byte, []string, string, error) {
	pipe := s.client.Pipeline()
	var valCmd *redis.StringCmd
	if onlyTail {
		valCmd = pipe.GetRange(ctx, key, -entryTailLen, -1)
	} else {
		valCmd = pipe.Get(ctx, key)
	}
	genCmds := make([]*redis.StringCmd, len(gens))
	for i, g := range gens {
		genCmds[i] = pipe.Get(ctx, g)
	}
	_, err := pipe.Exec(ctx)
	if err != nil && !errors.Is(err, redis.Nil) && !redis.HasErrorPrefix(err, "WRONGTYPE") {
		return nil, nil, "", err
	}
	cur, err := genValues(genCmds)
	if err != nil {
		return nil, nil, "", err
	}
	val, err := valCmd.Bytes()
	switch {
	case errors.Is(err, redis.Nil):
		return nil, cur, "", nil
	case redis.HasErrorPrefix(err, "WRONGTYPE"):
		// A foreign value of another type: a miss (it decodes as corrupt)
		// that the next SET overwrites, not a store failure.
		if onlyTail {
			return nil, cur, foreignTail, nil
		}
		return []byte{}, cur, "", nil
	case err != nil:
		return nil, nil, "", err
	case onlyTail:
		return nil, cur, string(val), nil
	}
	return val, cur, "", nil
}

// mget is the lookup on a single Redis: one command for the entry and its
// generations. A key holding another type reads as absent.
func (s *redisStore) mget(ctx context.Context, key string, gens []string) ([]byte, []string, error) {
	keys := make([]string, 0, 1+len(gens))
	keys = append(keys, key)
	keys = append(keys, gens...)
	cmd, err := s.auto.do(func(ctx context.Context, p redis.Pipeliner) redis.Cmder {
		return p.MGet(ctx, keys...)
	})
	if err != nil {
		return nil, nil, err
	}
	vals := cmd.(*redis.SliceCmd).Val()
	if len(vals) != len(keys) {
		return nil, nil, errShortReply
	}
	cur := mgetGenValues(vals[1:])
	v, ok := vals[0].(string)
	if !ok {
		return nil, cur, nil
	}
	// The reply string is never modified; viewing it as bytes saves copying
	// the whole body on every hit.
	return unsafe.Slice(unsafe.StringData(v), len(v)), cur, nil
}

// mgetGenValues reads generation values from an MGET reply: genMissing
// for a key that is absent (or holds another type).
func mgetGenValues(vals []any) []string {
	cur := make([]string, len(vals))
	for i, v := range vals {
		cur[i] = genMissing
		if v, ok := v.(string); ok {
			cur[i] = v
		}
	}
	return cur
}

func genValues(cmds []*redis.StringCmd) ([]string, error) {
	cur := make([]string, len(cmds))
	for i, c := range cmds {
		v, err := c.Result()
		switch {
		case errors.Is(err, redis.Nil), redis.HasErrorPrefix(err, "WRONGTYPE"):
			cur[i] = genMissing
		case err != nil:
			return nil, err
		default:
			cur[i] = v
		}
	}
	return cur, nil
}

func (s *redisStore) gens(ctx context.Context, gens []string) ([]string, error) {
	if len(gens) == 0 {
		return nil, nil
	}
	pipe := s.client.Pipeline()
	cmds := make([]*redis.StringCmd, len(gens))
	for i, g := range gens {
		cmds[i] = pipe.Get(ctx, g)
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) && !redis.HasErrorPrefix(err, "WRONGTYPE") {
		return nil, err
	}
	return genValues(cmds)
}

func (s *redisStore) set(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	if s.auto == nil {
		return s.client.Set(ctx, key, value, ttl).Err()
	}
	_, err := s.auto.do(func(ctx context.Context, p redis.Pipeliner) redis.Cmder {
		return p.Set(ctx, key, value, ttl)
	})
	return err
}

// del removes keys one command each, so keys in different Cluster slots
// never meet in one multi-key command (CROSSSLOT).
func (s *redisStore) del(ctx context.Context, keys ...string) (int64, error) {
	if len(keys) == 0 {
		return 0, nil
	}
	pipe := s.client.Pipeline()
	cmds := make([]*redis.IntCmd, len(keys))
	for i, k := range keys {
		cmds[i] = pipe.Unlink(ctx, k)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return 0, err
	}
	var n int64
	for _, c := range cmds {
		n += c.Val()
	}
	return n, nil
}

func (s *redisStore) scanDelete(ctx context.Context, match string, keep func(string) bool) (int64, error) {
	if cc, ok := s.client.(*redis.ClusterClient); ok {
		var total atomic.Int64
		err := cc.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error {
			n, err := scanDeleteNode(ctx, node, match, keep)
			total.Add(n)
			return err
		})
		return total.Load(), err
	}
	return scanDeleteNode(ctx, s.client, match, keep)
}

// scanDeleteNode walks one node with SCAN and removes matches with
// single-key UNLINKs in a pipeline per batch.
func scanDeleteNode(ctx context.Context, node redis.Cmdable, match string, keep func(string) bool) (int64, error) {
	var cursor uint64
	var removed int64
	for {
		keys, next, err := node.Scan(ctx, cursor, match, scanBatch).Result()
		if err != nil {
			return removed, err
		}
		doomed := keys[:0]
		for _, k := range keys {
			if keep == nil || !keep(k) {
				doomed = append(doomed, k)
			}
		}
		if len(doomed) > 0 {
			pipe := node.Pipeline()
			cmds := make([]*redis.IntCmd, len(doomed))
			for i, k := range doomed {
				cmds[i] = pipe.Unlink(ctx, k)
			}
			if _, err := pipe.Exec(ctx); err != nil {
				return removed, err
			}
			for _, c := range cmds {
				removed += c.Val()
			}
		}
		cursor = next
		if cursor == 0 {
			return removed, nil
		}
	}
}

var unlockScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
`)

func (s *redisStore) lock(ctx context.Context, key, token string, ttl time.Duration) (bool, error) {
	return s.client.SetNX(ctx, key, token, ttl).Result()
}

func (s *redisStore) unlock(ctx context.Context, key, token string) error {
	return unlockScript.Run(ctx, s.client, []string{key}, token).Err()
}

var extendLockScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
`)

func (s *redisStore) extendLock(ctx context.Context, key, token string, ttl time.Duration) error {
	return extendLockScript.Run(ctx, s.client, []string{key}, token, ttl.Milliseconds()).Err()
}

// info reports memory figures from INFO memory, summed over Cluster masters.
func (s *redisStore) info(ctx context.Context) map[string]any {
	out := map[string]any{"kind": s.name}
	var mu sync.Mutex
	var used int64
	var policy string
	collect := func(ctx context.Context, c redis.Cmdable) error {
		raw, err := c.Info(ctx, "memory").Result()
		if err != nil {
			return err
		}
		fields := parseInfo(raw)
		mu.Lock()
		defer mu.Unlock()
		n, _ := strconv.ParseInt(fields["used_memory"], 10, 64)
		used += n
		policy = fields["maxmemory_policy"]
		out["maxmemory"] = fields["maxmemory"]
		return nil
	}
	var err error
	if cc, ok := s.client.(*redis.ClusterClient); ok {
		err = cc.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error {
			return collect(ctx, node)
		})
	} else {
		err = collect(ctx, s.client)
	}
	if err != nil {
		out["error"] = err.Error()
		return out
	}
	out["used_memory"] = used
	out["maxmemory_policy"] = policy
	return out
}

func parseInfo(raw string) map[string]string {
	fields := make(map[string]string)
	for _, line := range strings.Split(raw, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if ok {
			fields[k] = v
		}
	}
	return fields
}

// isReplyError reports whether Redis answered with an error reply, as
// opposed to not answering at all.
func isReplyError(err error) bool {
	var reply redis.Error
	return errors.As(err, &reply)
}

func (s *redisStore) publish(ctx context.Context, msg string) error {
	return s.client.Publish(ctx, purgeChannel, msg).Err()
}

// isClosedError reports an operation on a store whose config was unloaded
// while a request was still using it: not a sign of Redis's health.
func isClosedError(err error) bool {
	return errors.Is(err, errStoreClosed) || errors.Is(err, redis.ErrClosed)
}

// isPoolWait reports a request that found every pooled connection busy: a
// burst on this Caddy, not a sign that Redis is down.
func isPoolWait(err error) bool {
	return errors.Is(err, redis.ErrPoolTimeout)
}

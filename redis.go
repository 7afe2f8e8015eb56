package rediscache

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// redisStore keeps entries and generations in Redis: standalone, Cluster or
// Sentinel, through one UniversalClient.
type redisStore struct {
	client redis.UniversalClient
	name   string
	auto   *autoPipeline // nil on a Cluster
}

// scanBatch bounds how many keys one SCAN step returns and one UNLINK
// pipeline removes, so a pattern purge never blocks Redis for long.
const scanBatch = 500

func newRedisStore(opts storeOptions) (*redisStore, error) {
	uo, err := universalOptions(opts)
	if err != nil {
		return nil, err
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
	rs := &redisStore{client: client, name: name}
	if _, cluster := client.(*redis.ClusterClient); !cluster {
		rs.auto = newAutoPipeline(client, opts.timeout)
	}
	return rs, nil
}

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
			return nil, fmt.Errorf("redis %q: %v", redactURL(raw), err)
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
	cmd, err := s.auto.do(ctx, func(ctx context.Context, p redis.Pipeliner) redis.Cmder {
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
	cmd, err := s.auto.do(ctx, func(ctx context.Context, p redis.Pipeliner) redis.Cmder {
		return p.MGet(ctx, keys...)
	})
	if err != nil {
		return nil, nil, err
	}
	vals := cmd.(*redis.SliceCmd).Val()
	cur := mgetGenValues(vals[1:])
	v, ok := vals[0].(string)
	if !ok {
		return nil, cur, nil
	}
	// The reply string is never modified; viewing it as bytes saves copying
	// the whole body on every hit.
	return unsafe.Slice(unsafe.StringData(v), len(v)), cur, nil
}

// mgetGenValues reads generation values from an MGET reply: zeroGen for a
// key that is absent (or holds another type).
func mgetGenValues(vals []any) []string {
	cur := make([]string, len(vals))
	for i, v := range vals {
		cur[i] = zeroGen
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
		case errors.Is(err, redis.Nil):
			cur[i] = zeroGen
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
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, err
	}
	return genValues(cmds)
}

func (s *redisStore) set(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	if s.auto == nil {
		return s.client.Set(ctx, key, value, ttl).Err()
	}
	_, err := s.auto.do(ctx, func(ctx context.Context, p redis.Pipeliner) redis.Cmder {
		return p.Set(ctx, key, value, ttl)
	})
	return err
}

// setIfScript writes an entry only while the purge epoch is unchanged, so
// that no purge can slip between the check and the write.
var setIfScript = redis.NewScript(`
local cur = redis.call('GET', KEYS[2]) or '0:0'
if cur ~= ARGV[3] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
`)

func (s *redisStore) setIf(ctx context.Context, key string, value []byte, ttl time.Duration, guard, guardVal string) (bool, error) {
	if s.auto == nil {
		// On a Cluster the guard and the entry live in different slots.
		cur, err := s.gens(ctx, []string{guard})
		if err != nil || cur[0] != guardVal {
			return false, err
		}
		return true, s.set(ctx, key, value, ttl)
	}
	ttlMS := max(ttl.Milliseconds(), 1)
	if len(value) >= stagedSetMinSize {
		return s.stagedSetIf(ctx, key, value, ttlMS, guard, guardVal)
	}
	return s.runGuarded(ctx, setIfScript, nil, []string{key, guard}, value, ttlMS, guardVal)
}

// stagedSetMinSize is the value size from which setIf stages the value
// with a plain SET: a Lua script copies its arguments, twice for a value it
// stores, which for a 64 KiB entry costs Redis more than the SET itself.
const stagedSetMinSize = 8 << 10

// stagedSetScript moves a staged value to its key, with the entry's TTL,
// only while the guard is unchanged; otherwise it drops the staged value.
var stagedSetScript = redis.NewScript(`
local cur = redis.call('GET', KEYS[3]) or '0:0'
if cur ~= ARGV[1] or redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[1])
  return 0
end
redis.call('RENAME', KEYS[1], KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
`)

// stagedSetIf is setIf in one round trip of two commands: a SET of the
// value under a key of its own (a concurrent writer must never move this
// writer's value under its own guard check), then the script. The staged
// key expires by itself should the script never run.
func (s *redisStore) stagedSetIf(ctx context.Context, key string, value []byte, ttlMS int64, guard, guardVal string) (bool, error) {
	staged := key + ":_staged:" + randomToken()
	var setCmd *redis.StatusCmd
	stage := func(ctx context.Context, p redis.Pipeliner) {
		setCmd = p.Set(ctx, staged, value, stagedTTL)
	}
	stored, err := s.runGuarded(ctx, stagedSetScript, stage, []string{staged, key, guard}, guardVal, ttlMS)
	if err == nil && setCmd != nil && setCmd.Err() != nil {
		// Refused (a full Redis, say): the script found nothing to move.
		return false, setCmd.Err()
	}
	return stored, err
}

// stagedTTL bounds how long a staged value outlives a lost script call.
const stagedTTL = 30 * time.Second

// runGuarded runs a guard script through the auto-pipeline, after the
// commands that before queues (only the first time: a script Redis does not
// know yet is sent again in full, without them).
func (s *redisStore) runGuarded(ctx context.Context, script *redis.Script, before func(context.Context, redis.Pipeliner), keys []string, args ...any) (bool, error) {
	cmd, err := s.auto.do(ctx, func(ctx context.Context, p redis.Pipeliner) redis.Cmder {
		if before != nil {
			before(ctx, p)
		}
		return script.EvalSha(ctx, p, keys, args...)
	})
	if err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
		cmd, err = s.auto.do(ctx, func(ctx context.Context, p redis.Pipeliner) redis.Cmder {
			return script.Eval(ctx, p, keys, args...)
		})
	}
	if err != nil {
		return false, err
	}
	n, err := cmd.(*redis.Cmd).Int()
	return n == 1, err
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

// bumpScript advances a "hard:soft" generation. A hard bump moves to the
// server's clock in microseconds (or one past the old value), so a key that
// expired and is re-created never repeats a value an old entry recorded.
var bumpScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
local h, s = 0, 0
if v then
  local i = string.find(v, ':', 1, true)
  if i then
    h = tonumber(string.sub(v, 1, i - 1)) or 0
    s = tonumber(string.sub(v, i + 1)) or 0
  end
end
if ARGV[1] == 'hard' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  if now > h then h = now else h = h + 1 end
else
  s = s + 1
end
local nv = string.format('%d:%d', h, s)
redis.call('SET', KEYS[1], nv, 'PX', ARGV[2])
return nv
`)

func (s *redisStore) bump(ctx context.Context, soft bool, ttl time.Duration, gens ...string) error {
	mode := "hard"
	if soft {
		mode = "soft"
	}
	pipe := s.client.Pipeline()
	for _, g := range gens {
		bumpScript.Eval(ctx, pipe, []string{g}, mode, ttl.Milliseconds())
	}
	_, err := pipe.Exec(ctx)
	return err
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

package rediscache

import (
	"context"
	"errors"
	"net/url"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/caddyserver/caddy/v2"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
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
		keys := []string{ns.(string) + ":_g:run", ns.(string) + ":_g:all"}
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
	_, err := s.auto.do(ctx, func(ctx context.Context, p redis.Pipeliner) redis.Cmder {
		return p.Set(ctx, key, value, ttl)
	})
	return err
}

// storeScript writes an entry only while every generation it records still
// has the recorded value (creating those recorded as births), and no
// pattern or key purge since the lookup covers it; see storeGuard.
//
// KEYS: entry, recent purges, staged value (or the entry again), gens...
// ARGV: ttl ms, gen ttl ms, elapsed µs, first late gen, staged, value,
// lookup wall clock µs, recorded values... (see purgeWindow)
var storeScript = redis.NewScript(`
local t = redis.call('TIME')
local since = math.min(tonumber(t[1]) * 1000000 + tonumber(t[2]) - tonumber(ARGV[3]), tonumber(ARGV[7]))
local staged = ARGV[5] == '1'
local function refuse(code)
  if staged then redis.call('DEL', KEYS[3]) end
  return code
end
local late = tonumber(ARGV[4])
local create = {}
for i = 4, #KEYS do
  local rec = ARGV[4 + i]
  local cur = redis.pcall('GET', KEYS[i])
  if type(cur) == 'table' then
    redis.call('DEL', KEYS[i])
    cur = false
  end
  if not cur then
    if string.sub(rec, 1, 1) ~= 'b' then return refuse(2) end
    create[#create + 1] = i
  elseif cur ~= rec then
    if string.match(rec, '^b[^:]*:0$') and string.match(cur, '^b[^:]*:0$') then
      return refuse(5)
    end
    return refuse(1)
  elseif i - 3 >= late then
    local h = tonumber(string.match(cur, '^(%d+):'))
    if h and h > since then return refuse(1) end
  end
end
local recent = redis.pcall('ZRANGEBYSCORE', KEYS[2], since, '+inf')
if type(recent) == 'table' and recent.err == nil then
  for _, m in ipairs(recent) do
    if string.find(KEYS[1], string.match(m, '^[^\n]*')) then return refuse(3) end
  end
end
for _, i in ipairs(create) do
  redis.call('SET', KEYS[i], ARGV[4 + i], 'PX', ARGV[2])
end
for i = 4, #KEYS do
  if redis.call('PTTL', KEYS[i]) < tonumber(ARGV[2]) / 2 then
    redis.call('PEXPIRE', KEYS[i], ARGV[2])
  end
end
if staged then
  if redis.call('EXISTS', KEYS[3]) == 0 then return 4 end
  redis.call('RENAME', KEYS[3], KEYS[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[6], 'PX', ARGV[1])
end
return 0
`)

func (s *redisStore) setIf(ctx context.Context, key string, value []byte, ttl time.Duration, g storeGuard) (storeOutcome, error) {
	if s.auto == nil {
		return s.clusterSetIf(ctx, key, value, ttl, g)
	}
	ttlMS := max(ttl.Milliseconds(), 1)
	keys := make([]string, 0, 3+len(g.gens))
	args := make([]any, 0, 7+len(g.gens))
	elapsed, wall := purgeWindow(g.lookupAt)
	staged := ""
	var stage func(context.Context, redis.Pipeliner)
	var setCmd *redis.StatusCmd
	if len(value) >= stagedSetMinSize {
		// A Lua script copies its arguments, twice for a value it stores,
		// which for a 64 KiB entry costs Redis more than the SET itself: the
		// value is staged under a key of its own and moved into place.
		staged = key + ":_staged:" + randomToken()
		stage = func(ctx context.Context, p redis.Pipeliner) {
			setCmd = p.Set(ctx, staged, value, stagedTTL)
		}
		keys = append(keys, key, g.patterns, staged)
		args = append(args, ttlMS, g.genTTL.Milliseconds(), elapsed.Microseconds(), g.late+1, "1", "", wall)
	} else {
		keys = append(keys, key, g.patterns, key)
		args = append(args, ttlMS, g.genTTL.Milliseconds(), elapsed.Microseconds(), g.late+1, "0", value, wall)
	}
	for _, st := range g.gens {
		keys = append(keys, st.key)
		args = append(args, st.val)
	}
	code, err := s.runScript(ctx, storeScript, stage, keys, args...)
	if err == nil && setCmd != nil && setCmd.Err() != nil {
		// Refused (a full Redis, say): the script found nothing to move.
		return outcomeStagedLost, setCmd.Err()
	}
	return storeOutcome(code), err
}

// clusterSetIf is setIf on a Cluster, where the entry, its generations and
// the recent purges live in different slots, so no script can see them
// all: the checks and the write are separate steps, and a purge landing
// between them is missed for this one write.
func (s *redisStore) clusterSetIf(ctx context.Context, key string, value []byte, ttl time.Duration, g storeGuard) (storeOutcome, error) {
	pipe := s.client.Pipeline()
	genCmds := make([]*redis.StringCmd, len(g.gens))
	for i, st := range g.gens {
		genCmds[i] = pipe.Get(ctx, st.key)
	}
	timeCmd := pipe.Time(ctx)
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) && !redis.HasErrorPrefix(err, "WRONGTYPE") {
		return outcomeStored, err
	}
	now := timeCmd.Val()
	elapsed, wall := purgeWindow(g.lookupAt)
	since := min(now.UnixMicro()-elapsed.Microseconds(), wall)
	var births []genStamp
	for i, st := range g.gens {
		cur, err := genCmds[i].Result()
		switch {
		case errors.Is(err, redis.Nil) || redis.HasErrorPrefix(err, "WRONGTYPE"):
			if !strings.HasPrefix(st.val, "b") {
				return outcomeGenLost, nil
			}
			births = append(births, st)
		case err != nil:
			return outcomeStored, err
		case cur != st.val && isFreshBirth(cur) && isFreshBirth(st.val):
			return outcomeBirthConflict, nil
		case cur != st.val:
			return outcomePurged, nil
		case i >= g.late:
			if h, err := strconv.ParseInt(hardPart(cur), 10, 64); err == nil && h > since {
				return outcomePurged, nil
			}
		}
	}
	if recent, err := s.client.ZRangeByScoreWithScores(ctx, g.patterns, &redis.ZRangeBy{Min: strconv.FormatInt(since, 10), Max: "+inf"}).Result(); err == nil {
		for _, z := range recent {
			if m, ok := z.Member.(string); ok && globMatch(purgedGlob(m), key) {
				return outcomePatternPurged, nil
			}
		}
	}
	for _, st := range births {
		ok, err := s.client.SetNX(ctx, st.key, st.val, g.genTTL).Result()
		if err != nil {
			return outcomeStored, err
		}
		if !ok {
			return outcomeBirthConflict, nil
		}
	}
	return outcomeStored, s.set(ctx, key, value, ttl)
}

// stagedSetMinSize is the value size from which setIf stages the value
// with a plain SET instead of passing it through the script.
const stagedSetMinSize = 8 << 10

// stagedTTL bounds how long a staged value outlives a lost script call.
const stagedTTL = 30 * time.Second

// runScript runs a script through the auto-pipeline, after the commands
// that before queues (only the first time: a script Redis does not know yet
// is sent again in full, without them), and returns its integer reply.
func (s *redisStore) runScript(ctx context.Context, script *redis.Script, before func(context.Context, redis.Pipeliner), keys []string, args ...any) (int64, error) {
	cmd, err := s.auto.do(ctx, func(ctx context.Context, p redis.Pipeliner) redis.Cmder {
		if before != nil {
			before(ctx, p)
		}
		return script.EvalSha(ctx, p, keys, args...)
	})
	if err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
		cmd, err = s.auto.do(ctx, func(ctx context.Context, p redis.Pipeliner) redis.Cmder {
			if before != nil {
				before(ctx, p)
			}
			return script.Eval(ctx, p, keys, args...)
		})
	}
	if err != nil {
		return 0, err
	}
	return cmd.(*redis.Cmd).Int64()
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
// expired and is re-created never repeats a value an old entry recorded; a
// soft bump keeps the hard part. A value that is not a generation (another
// tool's, or another type) is overwritten, not an error.
var bumpScript = redis.NewScript(`
local v = redis.pcall('GET', KEYS[1])
if type(v) == 'table' then
  redis.call('DEL', KEYS[1])
  v = false
end
local h, s = nil, 0
if v then
  local i = string.find(v, ':', 1, true)
  if i then
    h = string.sub(v, 1, i - 1)
    s = tonumber(string.sub(v, i + 1)) or 0
  end
end
if ARGV[1] == 'hard' or h == nil then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local old = tonumber(h or '') or 0
  if now > old then h = now else h = old + 1 end
  h = string.format('%d', h)
end
if ARGV[1] ~= 'hard' then s = s + 1 end
local nv = h .. ':' .. string.format('%d', s)
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

// rememberScript records a pattern or key purge for the answers in flight
// (see storeScript), forgetting those older than the window, and keeping at
// most a bounded number.
var rememberScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local kind = redis.call('TYPE', KEYS[1]).ok
if kind ~= 'zset' and kind ~= 'none' then redis.call('DEL', KEYS[1]) end
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]) * 1000)
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -tonumber(ARGV[3]) - 1)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
`)

func (s *redisStore) rememberPurge(ctx context.Context, key, glob string) error {
	return rememberScript.Run(ctx, s.client, []string{key}, purgeRecord(glob), purgeMemory.Milliseconds(), purgeMemoryLimit).Err()
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

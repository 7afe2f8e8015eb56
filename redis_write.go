package rediscache

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Guarded writes, generation bumps and remembered purges on Redis: the
// scripts that keep a write from undoing a purge (see generations.go).

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
	cmd, err := s.auto.do(func(ctx context.Context, p redis.Pipeliner) redis.Cmder {
		if before != nil {
			before(ctx, p)
		}
		return script.EvalSha(ctx, p, keys, args...)
	})
	if err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
		cmd, err = s.auto.do(func(ctx context.Context, p redis.Pipeliner) redis.Cmder {
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

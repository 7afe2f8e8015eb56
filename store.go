package rediscache

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"go.uber.org/zap"
)

// store is what the handler needs from a backend. Generations are counters
// ("hard:soft", see generations.go) that entries record when they are
// stored; bumping one invalidates every entry that recorded an older value,
// in one write. An absent generation reads as genMissing.
type store interface {
	// get returns the value at key (nil when absent) and the current value
	// of each generation key, in one round trip. When tail is set (the
	// entryTail of a value the caller holds decoded) and the value still
	// ends with it, get reports it unchanged instead of returning it; a
	// backend may also ignore tail.
	get(ctx context.Context, key string, gens []string, tail []byte) (val []byte, cur []string, unchanged bool, err error)
	// gens returns the current value of each generation key.
	gens(ctx context.Context, gens []string) ([]string, error)
	set(ctx context.Context, key string, value []byte, ttl time.Duration) error
	// setIf sets key only while the guard holds, creating the generations
	// it records as births, and reports what became of the write.
	setIf(ctx context.Context, key string, value []byte, ttl time.Duration, guard storeGuard) (storeOutcome, error)
	del(ctx context.Context, keys ...string) (int64, error)
	// bump advances generation keys: a hard bump invalidates, a soft bump
	// only marks stale. Each key lives for ttl after its last bump.
	bump(ctx context.Context, soft bool, ttl time.Duration, gens ...string) error
	// rememberPurge records a pattern (or exact key) purge under key, so
	// that guarded writes of answers in flight when it happened see it.
	rememberPurge(ctx context.Context, key, glob string) error
	// scanDelete removes the keys matching a glob for which keep is false,
	// in bounded batches, and reports how many it removed.
	scanDelete(ctx context.Context, match string, keep func(string) bool) (int64, error)
	// lock takes a short exclusive lock; unlock releases it if still ours.
	lock(ctx context.Context, key, token string, ttl time.Duration) (bool, error)
	unlock(ctx context.Context, key, token string) error
	// extendLock prolongs a lock that is still ours.
	extendLock(ctx context.Context, key, token string, ttl time.Duration) error
	info(ctx context.Context) map[string]any
	kind() string
	close() error
}

var errBreakerOpen = errors.New("store circuit breaker is open")

// storeOptions is everything that identifies one store connection.
type storeOptions struct {
	urls            []string
	username        string
	password        string
	sentinelMaster  string
	timeout         time.Duration
	breakerFailures int
	breakerCooldown time.Duration
	memoryLimit     int64
	localLimit      int64
	copiesLimit     int64
}

// guardedStore bounds every store call by a timeout and a circuit breaker,
// so a dead or slow store costs requests nothing but a SKIP.
type guardedStore struct {
	backend store
	timeout time.Duration
	breaker *breaker
	metrics *handlerMetrics

	local      *localTier            // nil unless local_cache is set and Redis is used
	copies     *boundedLRU[heldCopy] // validated copies; nil unless Redis is used
	publisher  func(ctx context.Context, msg string) error
	stopListen context.CancelFunc

	logger        *zap.Logger
	pending       *pendingPurges
	pendingLogged atomic.Bool
	stopRetry     context.CancelFunc
	namespaces    *sync.Map // namespace -> generation TTL; shared with a Redis backend
	probe         *healthProbe
	ops           *opCounter   // operations sent to Redis, since the store was created
	requests      atomic.Int64 // requests through the cache, since the store was created
}

func newGuardedStore(opts storeOptions, logger *zap.Logger, metrics *handlerMetrics) (*guardedStore, error) {
	var backend store
	var rs *redisStore
	if len(opts.urls) == 0 {
		backend = newMemoryStore(opts.memoryLimit)
	} else {
		var err error
		if rs, err = newRedisStore(opts); err != nil {
			return nil, err
		}
		backend = rs
	}
	g := &guardedStore{
		backend: backend,
		timeout: opts.timeout,
		metrics: metrics,
		logger:  logger,
		pending: newPendingPurges(maxPendingPurges),
	}
	if rs != nil {
		g.namespaces = rs.namespaces
	} else {
		g.namespaces = new(sync.Map)
	}
	retryCtx, stopRetry := context.WithCancel(context.Background())
	g.stopRetry = stopRetry
	go g.retryPending(retryCtx)
	if rs != nil && opts.copiesLimit > 0 {
		g.copies = newEntryLRU[heldCopy](opts.copiesLimit)
	}
	if rs != nil && opts.localLimit > 0 {
		g.local = newLocalTier(opts.localLimit)
		g.publisher = rs.publish
		ctx, cancel := context.WithCancel(context.Background())
		g.stopListen = cancel
		go func() {
			defer recoverAndLog(logger, "purge notices")
			g.local.listen(ctx, rs.client)
		}()
	}
	g.breaker = newBreaker(opts.breakerFailures, opts.breakerCooldown, func(open bool, err error) {
		metrics.setBreaker(backend.kind(), open)
		if open {
			logger.Warn("cache store unavailable; requests go straight to the upstream",
				zap.String("store", backend.kind()), zap.Error(err))
		} else {
			logger.Warn("cache store available again; caching resumed", zap.String("store", backend.kind()))
		}
	})
	metrics.setBreaker(backend.kind(), false)
	g.probe = newHealthProbe(redisPing(backend), opts.timeout, logger)
	g.ops = countOps(backend)
	return g, nil
}

// serveNamespace records a namespace that uses the store, so that a Redis
// restart found on reconnect invalidates it (see checkRestart).
func (g *guardedStore) serveNamespace(ns string, genTTL time.Duration) {
	g.namespaces.Store(ns, genTTL)
}

// Destruct closes the backend when no config uses it any more.
func (g *guardedStore) Destruct() error {
	g.stopRetry()
	g.probe.close()
	if g.stopListen != nil {
		g.stopListen()
	}
	return g.backend.close()
}

// notify applies a purge notice to this instance's local tier at once and
// publishes it to the other instances.
func (g *guardedStore) notify(ctx context.Context, msg string) {
	if g.local == nil {
		return
	}
	g.local.handleNotice(msg)
	_ = g.call(ctx, "publish", func(ctx context.Context) error { return g.publisher(ctx, msg) })
}

// call runs op under the breaker and the timeout.
func (g *guardedStore) call(ctx context.Context, name string, op func(context.Context) error) error {
	if !g.breaker.allow() {
		return errBreakerOpen
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), g.timeout)
	defer cancel()
	g.countOp()
	start := time.Now()
	err := op(ctx)
	g.metrics.observeStore(name, time.Since(start), err)
	g.breaker.record(err)
	return err
}

func (g *guardedStore) get(ctx context.Context, key string, gens []string, tail []byte) (val []byte, cur []string, unchanged bool, err error) {
	err = g.call(ctx, "get", func(ctx context.Context) error {
		val, cur, unchanged, err = g.backend.get(ctx, key, gens, tail)
		return err
	})
	return val, cur, unchanged, err
}

func (g *guardedStore) gens(ctx context.Context, gens []string) (cur []string, err error) {
	err = g.call(ctx, "gens", func(ctx context.Context) error {
		cur, err = g.backend.gens(ctx, gens)
		return err
	})
	return cur, err
}

func (g *guardedStore) set(ctx context.Context, key string, value []byte, ttl time.Duration) error {
	return g.call(ctx, "set", func(ctx context.Context) error {
		return g.backend.set(ctx, key, value, ttl)
	})
}

func (g *guardedStore) setIf(ctx context.Context, key string, value []byte, ttl time.Duration, guard storeGuard) (out storeOutcome, err error) {
	err = g.call(ctx, "set", func(ctx context.Context) error {
		out, err = g.backend.setIf(ctx, key, value, ttl, guard)
		return err
	})
	return out, err
}

func (g *guardedStore) rememberPurge(ctx context.Context, key, glob string) error {
	return g.call(ctx, "remember", func(ctx context.Context) error {
		return g.backend.rememberPurge(ctx, key, glob)
	})
}

func (g *guardedStore) extendLock(ctx context.Context, key, token string, ttl time.Duration) error {
	return g.call(ctx, "lock", func(ctx context.Context) error {
		return g.backend.extendLock(ctx, key, token, ttl)
	})
}

func (g *guardedStore) del(ctx context.Context, keys ...string) (n int64, err error) {
	err = g.call(ctx, "del", func(ctx context.Context) error {
		n, err = g.backend.del(ctx, keys...)
		return err
	})
	if err == nil {
		g.notify(ctx, "clear")
	}
	return n, err
}

func (g *guardedStore) bump(ctx context.Context, soft bool, ttl time.Duration, gens ...string) error {
	err := g.call(ctx, "bump", func(ctx context.Context) error {
		return g.backend.bump(ctx, soft, ttl, gens...)
	})
	if err == nil {
		g.notify(ctx, "g "+strings.Join(gens, " "))
	}
	return err
}

// scanDelete is not bounded by the per-request timeout: a pattern purge of a
// million keys takes seconds, and it is run by an operator, not a client.
func (g *guardedStore) scanDelete(ctx context.Context, match string, keep func(string) bool) (int64, error) {
	if !g.breaker.allow() {
		return 0, errBreakerOpen
	}
	n, err := g.backend.scanDelete(ctx, match, keep)
	g.breaker.record(err)
	g.notify(ctx, "clear")
	return n, err
}

func (g *guardedStore) lock(ctx context.Context, key, token string, ttl time.Duration) (ok bool, err error) {
	err = g.call(ctx, "lock", func(ctx context.Context) error {
		ok, err = g.backend.lock(ctx, key, token, ttl)
		return err
	})
	return ok, err
}

func (g *guardedStore) unlock(ctx context.Context, key, token string) error {
	return g.call(ctx, "unlock", func(ctx context.Context) error {
		return g.backend.unlock(ctx, key, token)
	})
}

// breaker is a consecutive-failure circuit breaker. While open, calls fail
// at once; after the cooldown one probe is let through, and its outcome
// closes or re-opens the breaker.
type breaker struct {
	threshold int
	cooldown  time.Duration
	onChange  func(open bool, err error)

	mu        sync.Mutex
	failures  int
	open      bool
	openUntil time.Time
	probing   bool
	isOpen    atomic.Bool
}

func newBreaker(threshold int, cooldown time.Duration, onChange func(bool, error)) *breaker {
	return &breaker{threshold: threshold, cooldown: cooldown, onChange: onChange}
}

func (b *breaker) allow() bool {
	if !b.isOpen.Load() {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.open {
		return true
	}
	if b.probing || time.Now().Before(b.openUntil) {
		return false
	}
	b.probing = true
	return true
}

func (b *breaker) record(err error) {
	// A reply error (OOM under noeviction, a script error) means the store
	// is up and answering; only failures to reach it count.
	if errors.Is(err, context.Canceled) || errors.Is(err, errBreakerOpen) || isClosedError(err) || isPoolWait(err) {
		// Says nothing about the store; a probe that ended this way
		// leaves room for the next one.
		if b.isOpen.Load() {
			b.mu.Lock()
			b.probing = false
			b.mu.Unlock()
		}
		return
	}
	failed := err != nil && !isReplyError(err)
	if !failed && !b.isOpen.Load() {
		b.mu.Lock()
		b.failures = 0
		b.mu.Unlock()
		return
	}
	b.mu.Lock()
	var changed, nowOpen bool
	if failed {
		b.failures++
		if b.open {
			b.openUntil = time.Now().Add(b.cooldown)
			b.probing = false
		} else if b.failures >= b.threshold {
			b.open, changed, nowOpen = true, true, true
			b.openUntil = time.Now().Add(b.cooldown)
			b.isOpen.Store(true)
		}
	} else if b.open {
		b.open, b.probing, b.failures, changed = false, false, 0, true
		b.isOpen.Store(false)
	}
	b.mu.Unlock()
	if changed {
		b.onChange(nowOpen, err)
	}
}

// Entry encoding. A stored value is:
//
//	magic "RC" | version | kind | fields... | random id | crc32c of everything before
//
// Version 3 added, before the body, the body's content coding, a flags
// byte and the decoded (identity) length; version 2 values, which have
// none, still decode as identity entries.
//
// A value that fails any check decodes as an error, which the handler
// treats as a miss and overwrites. The last entryTailLen bytes (id and
// checksum) identify one stored value: an instance holding a decoded copy
// of it checks that the value is unchanged by reading only those.
const (
	entryMagic0   = 'R'
	entryMagic1   = 'C'
	entryVersion  = 3
	entryVersion2 = 2 // no coding fields; still read
	entryIDLen    = 8
	entryTailLen  = entryIDLen + 4 // the id and the checksum
	kindResponse  = 1
	kindVaryIndex = 2
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

var errCorrupt = errors.New("corrupt cache entry")

// genStamp records the value a generation key had when an entry was stored.
type genStamp struct {
	key string
	val string
}

// entry is a stored response, or a Vary index that points at variants.
type entry struct {
	kind       byte
	status     int
	storedAt   time.Time     // when the response was received
	initialAge time.Duration // RFC 9111 §4.2.3 corrected_initial_age
	freshFor   time.Duration
	swr        time.Duration // stale-while-revalidate window
	sie        time.Duration // stale-if-error window
	noCache    bool          // must be revalidated before every use
	gens       []genStamp
	vary       []string // kindVaryIndex: header names; kindResponse: names the variant was keyed on
	varyEpoch  string   // kindVaryIndex: changes whenever the index is re-created
	header     http.Header
	body       []byte

	// coding is the content coding of body (codingIdentity, codingGzip,
	// codingZstd); identityLen is the decoded body's length when coded.
	coding      byte
	identityLen int64
	// etagOfCoded says the ETag in header is the coded form's (the
	// upstream sent the body coded), not the identity form's.
	etagOfCoded bool
	// plainOf marks the identity original of a body just compressed, which
	// the clients of a miss that do not take the coding are sent; it is
	// never stored.
	plainOf bool
}

// Entry flags (version 3).
const flagETagOfCoded = 1

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func (e *entry) encode() []byte { return e.appendEncoded(nil) }

// appendEncoded encodes e into buf's storage when it is large enough.
func (e *entry) appendEncoded(buf []byte) []byte {
	b := buf[:0]
	if size := e.encodedSizeBound(); cap(b) < size {
		b = make([]byte, 0, size)
	}
	b = append(b, entryMagic0, entryMagic1, entryVersion, e.kind)
	b = binary.AppendUvarint(b, uint64(e.status))
	b = binary.AppendVarint(b, e.storedAt.UnixMicro())
	b = binary.AppendVarint(b, int64(e.initialAge))
	b = binary.AppendVarint(b, int64(e.freshFor))
	b = binary.AppendVarint(b, int64(e.swr))
	b = binary.AppendVarint(b, int64(e.sie))
	if e.noCache {
		b = append(b, 1)
	} else {
		b = append(b, 0)
	}
	b = binary.AppendUvarint(b, uint64(len(e.gens)))
	for _, g := range e.gens {
		b = appendString(b, g.key)
		b = appendString(b, g.val)
	}
	b = binary.AppendUvarint(b, uint64(len(e.vary)))
	for _, v := range e.vary {
		b = appendString(b, v)
	}
	b = appendString(b, e.varyEpoch)
	b = binary.AppendUvarint(b, uint64(len(e.header)))
	for k, vs := range e.header {
		b = appendString(b, k)
		b = binary.AppendUvarint(b, uint64(len(vs)))
		for _, v := range vs {
			b = appendString(b, v)
		}
	}
	var flags byte
	if e.etagOfCoded {
		flags |= flagETagOfCoded
	}
	b = append(b, e.coding, flags)
	b = binary.AppendUvarint(b, uint64(e.identityLen))
	b = binary.AppendUvarint(b, uint64(len(e.body)))
	b = append(b, e.body...)
	var id [entryIDLen]byte
	_, _ = rand.Read(id[:])
	b = append(b, id[:]...)
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, crcTable))
}

// encodedSizeBound is at least the encoded length, so that encoding never
// copies a large body twice.
func (e *entry) encodedSizeBound() int {
	const n = binary.MaxVarintLen64
	size := 4 + 7*n + 3 + n + entryTailLen + 4*n + len(e.varyEpoch) + len(e.body)
	for _, g := range e.gens {
		size += 2*n + len(g.key) + len(g.val)
	}
	for _, v := range e.vary {
		size += n + len(v)
	}
	for k, vs := range e.header {
		size += 2*n + len(k)
		for _, v := range vs {
			size += n + len(v)
		}
	}
	return size
}

// encodeBuffers recycles the buffers that entries are encoded into on
// their way to the store.
var encodeBuffers sync.Pool

// maxPooledEncodeBuffer keeps the odd huge entry's buffer out of the pool.
const maxPooledEncodeBuffer = 1 << 20

// entryTail returns the bytes that identify an encoded value, or nil.
func entryTail(raw []byte) []byte {
	if len(raw) < entryTailLen {
		return nil
	}
	return raw[len(raw)-entryTailLen:]
}

// mustRevalidate reports whether the origin forbade serving e stale.
func (e *entry) mustRevalidate() bool {
	cc := parseCacheControl(e.header.Values("Cache-Control"))
	return cc.has("must-revalidate") || cc.has("proxy-revalidate") || cc.has("s-maxage")
}

// decoder reads an encoded entry; the first error sticks.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = errCorrupt
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.err = errCorrupt
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) bytes() []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.err = errCorrupt
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

// str aliases the decoded bytes, which decodeEntry's caller keeps unchanged.
func (d *decoder) str() string {
	b := d.bytes()
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}

// count reads a length prefix, rejecting counts that could not possibly fit
// in the remaining bytes, so a corrupt value cannot make us allocate much.
func (d *decoder) count() int {
	n := d.uvarint()
	if n > uint64(len(d.b)) {
		d.err = errCorrupt
		return 0
	}
	return int(n)
}

func (d *decoder) byte() byte {
	if d.err != nil {
		return 0
	}
	if len(d.b) == 0 {
		d.err = errCorrupt
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

// decodeEntry parses a stored value. The body and every string alias raw,
// so raw must never change afterwards; store values are written once.
func decodeEntry(raw []byte) (*entry, error) { return decodeEntryChecked(raw, true) }

// decodeEntryChecked is decodeEntry; without checkCoded, a coded body is
// not decoded to check it, for values this process wrote itself (the
// embedded store's).
func decodeEntryChecked(raw []byte, checkCoded bool) (*entry, error) {
	if len(raw) < 8+entryTailLen || raw[0] != entryMagic0 || raw[1] != entryMagic1 {
		return nil, errCorrupt
	}
	version := raw[2]
	if version != entryVersion && version != entryVersion2 {
		return nil, fmt.Errorf("%w: unknown version %d", errCorrupt, version)
	}
	payload := raw[:len(raw)-4]
	if crc32.Checksum(payload, crcTable) != binary.BigEndian.Uint32(raw[len(raw)-4:]) {
		return nil, fmt.Errorf("%w: checksum mismatch", errCorrupt)
	}
	d := &decoder{b: payload[4 : len(payload)-entryIDLen]}
	e := &entry{kind: raw[3]}
	if e.kind != kindResponse && e.kind != kindVaryIndex {
		return nil, fmt.Errorf("%w: unknown kind %d", errCorrupt, e.kind)
	}
	e.status = int(d.uvarint())
	e.storedAt = time.UnixMicro(d.varint())
	e.initialAge = time.Duration(d.varint())
	e.freshFor = time.Duration(d.varint())
	e.swr = time.Duration(d.varint())
	e.sie = time.Duration(d.varint())
	e.noCache = d.byte() == 1
	if n := d.count(); n > 0 {
		e.gens = make([]genStamp, n)
		for i := range e.gens {
			e.gens[i] = genStamp{key: d.str(), val: d.str()}
		}
	}
	if n := d.count(); n > 0 {
		e.vary = make([]string, n)
		for i := range e.vary {
			e.vary[i] = d.str()
		}
	}
	e.varyEpoch = d.str()
	nh := d.count()
	e.header = make(http.Header, nh)
	for i := 0; i < nh && d.err == nil; i++ {
		name := d.str()
		nv := d.count()
		vals := make([]string, nv)
		for j := range vals {
			vals[j] = d.str()
		}
		e.header[name] = vals
	}
	if version >= 3 {
		e.coding = d.byte()
		e.etagOfCoded = d.byte()&flagETagOfCoded != 0
		e.identityLen = int64(d.uvarint() & (1<<62 - 1))
	}
	e.body = d.bytes()
	if d.err != nil {
		return nil, d.err
	}
	if e.coding != codingIdentity && checkCoded {
		// A coded body is checked whole here, so that a client is never
		// sent part of a body that then fails to decode.
		if n, err := decodedLength(e.coding, e.body, e.identityLen); err != nil || n != e.identityLen {
			return nil, fmt.Errorf("%w: coded body does not decode to its length", errCorrupt)
		}
	}
	if len(d.b) != 0 {
		return nil, fmt.Errorf("%w: %d trailing bytes", errCorrupt, len(d.b))
	}
	if e.kind == kindResponse && (e.status < 100 || e.status > 599) {
		return nil, fmt.Errorf("%w: status %d", errCorrupt, e.status)
	}
	return e, nil
}

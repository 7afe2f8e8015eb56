package rediscache

import (
	"context"
	"net/http"
	"slices"
	"strconv"
	"time"
)

// storeFetched writes a fetched response (and, for a Vary response, its
// index) to the store. The write is guarded, so that it undoes no purge
// made since the lookup: a purge of a generation the entry records, a
// purge of a tag the answer names, or a pattern or key purge covering it.
// The client already has the answer, so a write that is refused or fails
// only costs a future miss; it is counted by reason. A write that failed
// (rather than being refused) reports outcomeStored: nothing says a purge
// covers the answer.
func (cr *cacheRequest) storeFetched(res *fetched) storeOutcome {
	h := cr.h
	ctx := context.WithoutCancel(cr.r.Context())
	e := res.entry
	guard, out, err := cr.storeGuard(ctx, res.tags)
	if err != nil || out != outcomeStored {
		cr.countUnstored(out, err)
		return out
	}
	e.gens = guard.gens
	key := cr.key.primary
	if len(res.vary) > 0 {
		if key, err = cr.varyIndex(ctx, e, res.vary); err != nil {
			cr.countUnstored(out, err)
			return outcomeStored
		}
	}
	raw, out, err := cr.writeGuarded(ctx, key, e, res.storeTTL, guard)
	if err == nil && out == outcomeBirthConflict {
		// Concurrent first writes of entries that share a generation (a
		// route's first misses after a start) race to create it; the loser
		// adopts the winner's value, which no purge has touched, once.
		if guard, err = cr.adoptBirths(ctx, guard); err == nil {
			e.gens = guard.gens
			raw, out, err = cr.writeGuarded(ctx, key, e, res.storeTTL, guard)
		}
	}
	if err != nil || out != outcomeStored {
		cr.countUnstored(out, err)
		return out
	}
	if copies := h.store.copies; copies != nil {
		// Whatever this instance held for the key is not what Redis holds
		// now. The new entry is not held until it is read back: most
		// entries are never read by the instance that stored them.
		copies.remove(key)
	}
	cr.keepLocal(key, e)
	h.metrics.addStored(cr.route.Name, len(raw))
	return outcomeStored
}

// writeGuarded encodes the entry and writes it under the guard.
func (cr *cacheRequest) writeGuarded(ctx context.Context, key string, e *entry, ttl time.Duration, guard storeGuard) ([]byte, storeOutcome, error) {
	var buf []byte
	if b, ok := encodeBuffers.Get().(*[]byte); ok {
		buf = *b
	}
	raw := e.appendEncoded(buf)
	out, err := cr.h.store.setIf(ctx, key, raw, ttl, guard)
	if err == nil && cap(raw) <= maxPooledEncodeBuffer {
		// The store has written raw out (or copied it) and nothing keeps
		// it. After an error it may still be queued to be written, so it is
		// left to the garbage collector.
		encodeBuffers.Put(&raw)
	}
	return raw, out, err
}

// adoptBirths replaces the birth values a guard meant to create with those
// another write created meanwhile, while no purge has touched them.
func (cr *cacheRequest) adoptBirths(ctx context.Context, g storeGuard) (storeGuard, error) {
	var keys []string
	for _, st := range g.gens {
		if isFreshBirth(st.val) {
			keys = append(keys, st.key)
		}
	}
	cur, err := cr.h.store.gens(ctx, keys)
	if err != nil {
		return g, err
	}
	adopted := append([]genStamp(nil), g.gens...)
	j := 0
	for i, st := range adopted {
		if !isFreshBirth(st.val) {
			continue
		}
		if isFreshBirth(cur[j]) {
			adopted[i].val = cur[j]
		}
		j++
	}
	g.gens = adopted
	return g, nil
}

// countUnstored records why an answer that was served as stored was not.
func (cr *cacheRequest) countUnstored(out storeOutcome, err error) {
	reason := out.reason()
	if err != nil {
		cr.h.logStoreError("store", err)
		reason = "error"
	}
	cr.h.metrics.countUnstored(cr.route.Name, reason)
}

// storeGuard gathers what must still hold when the entry is written: the
// generations read at lookup, and those of the tags the answer names, read
// now (a purge of one since the lookup began refuses the write).
func (cr *cacheRequest) storeGuard(ctx context.Context, tags []string) (storeGuard, storeOutcome, error) {
	h := cr.h
	g := storeGuard{
		gens:     cr.stamps(),
		late:     len(cr.gens),
		lookupAt: cr.lookupAt,
		patterns: h.recentPurgesKey(),
		genTTL:   h.genTTL,
	}
	if time.Since(cr.lookupAt) >= purgeMemory {
		return g, outcomeTooLate, nil
	}
	var late []string
	for _, t := range tags {
		if k := h.tagGenKey(t); !slices.Contains(cr.gens, k) && !slices.Contains(late, k) {
			late = append(late, k)
		}
	}
	if len(late) == 0 {
		return g, outcomeStored, nil
	}
	vals, err := h.store.gens(ctx, late)
	if err != nil {
		return g, outcomeStored, err
	}
	for i, k := range late {
		g.gens = append(g.gens, genStamp{key: k, val: orBirth(vals[i])})
	}
	return g, outcomeStored, nil
}

// stamps records the generation values seen at lookup, so that a purge that
// happens while the upstream is answering invalidates this entry too. A
// generation that was absent gets a birth value, created with the entry.
func (cr *cacheRequest) stamps() []genStamp {
	out := make([]genStamp, 0, len(cr.gens))
	for i, k := range cr.gens {
		v := genMissing
		if i < len(cr.cur) {
			v = cr.cur[i]
		}
		out = append(out, genStamp{key: k, val: orBirth(v)})
	}
	return out
}

func orBirth(gen string) string {
	if gen == genMissing {
		return newBirthGen()
	}
	return gen
}

// varyIndex returns the key of the answer's Vary variant, writing a new
// index at the primary key when the one found at lookup does not name the
// same headers.
func (cr *cacheRequest) varyIndex(ctx context.Context, e *entry, vary []string) (string, error) {
	h := cr.h
	key := cr.key.primary
	var epoch string
	if cr.varyIdx != nil && equalFold(cr.varyIdx.vary, vary) {
		epoch = cr.varyIdx.varyEpoch
	} else {
		epoch = strconv.FormatInt(time.Now().UnixNano(), 36)
		idx := &entry{kind: kindVaryIndex, storedAt: e.storedAt, vary: vary, varyEpoch: epoch, header: http.Header{}}
		if err := h.store.set(ctx, key, idx.encode(), time.Duration(h.MaxTTL)); err != nil {
			return "", err
		}
		cr.keepLocal(key, idx)
	}
	return variantKey(cr.key.primary, epoch, vary, cr.r), nil
}

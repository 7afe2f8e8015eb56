package rediscache

import (
	"sync/atomic"
)

// inflightBudget bounds the bytes of response bodies that requests hold in
// memory while the cache stores them. Slow clients keep an answer held for
// as long as they take to read it, so without a bound a few hundred of them
// asking for large distinct URLs hold gigabytes.
type inflightBudget struct {
	limit int64
	used  atomic.Int64
}

func newInflightBudget(limit int64) *inflightBudget {
	return &inflightBudget{limit: limit}
}

// reserve takes n bytes from the budget, or nothing and false when they do
// not fit.
func (b *inflightBudget) reserve(n int64) bool {
	if b == nil {
		return true
	}
	for {
		used := b.used.Load()
		if used+n > b.limit {
			return false
		}
		if b.used.CompareAndSwap(used, used+n) {
			return true
		}
	}
}

func (b *inflightBudget) release(n int64) {
	if b != nil && n > 0 {
		b.used.Add(-n)
	}
}

// inUse is the number of bytes currently held.
func (b *inflightBudget) inUse() int64 {
	if b == nil {
		return 0
	}
	return b.used.Load()
}

// budgetHold is what one request took from the budget; it is given back
// when the request's ServeHTTP returns, after the store write.
type budgetHold struct {
	budget *inflightBudget
	held   atomic.Int64
}

// grow takes n more bytes for the request.
func (bh *budgetHold) grow(n int64) bool {
	if n <= 0 {
		return true
	}
	if !bh.budget.reserve(n) {
		return false
	}
	bh.held.Add(n)
	return true
}

// releaseAll gives back everything the request took.
func (bh *budgetHold) releaseAll() {
	bh.budget.release(bh.held.Swap(0))
}

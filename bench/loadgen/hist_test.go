package main

import (
	"math/rand"
	"sort"
	"testing"
)

func TestBucketRoundTrip(t *testing.T) {
	for _, v := range []uint64{0, 1, 127, 128, 129, 1000, 65535, 1 << 20, 123456789, 1 << 40} {
		i := bucketOf(v)
		if i < 0 || i >= nBuckets {
			t.Fatalf("bucketOf(%d) = %d out of range", v, i)
		}
		mid := bucketMid(i)
		if bucketOf(mid) != i {
			t.Errorf("bucketMid(%d) = %d lands in bucket %d", i, mid, bucketOf(mid))
		}
		diff := float64(mid) - float64(v)
		if diff < 0 {
			diff = -diff
		}
		if v >= linearMax && diff/float64(v) > 0.01 {
			t.Errorf("v=%d: bucket mid %d is %.2f%% off", v, mid, 100*diff/float64(v))
		}
		if v < linearMax && mid != v {
			t.Errorf("v=%d below %d must be exact, got %d", v, linearMax, mid)
		}
	}
	// Buckets are monotonic.
	prev := -1
	for v := uint64(0); v < 1<<22; v += 37 {
		if b := bucketOf(v); b < prev {
			t.Fatalf("bucketOf not monotonic at %d", v)
		} else {
			prev = b
		}
	}
}

func TestQuantilesMatchSortedSample(t *testing.T) {
	r := rand.New(rand.NewSource(1))
	var h hist
	var xs []uint64
	for i := 0; i < 100000; i++ {
		v := uint64(r.ExpFloat64() * 3000) // µs, long tail
		xs = append(xs, v)
		h.record(v)
	}
	sort.Slice(xs, func(i, j int) bool { return xs[i] < xs[j] })
	for _, q := range []float64{0.5, 0.9, 0.99} {
		want := float64(xs[int(q*float64(len(xs)))-1])
		got := float64(h.quantile(q))
		if d := (got - want) / want; d > 0.01 || d < -0.01 {
			t.Errorf("q%.2f: got %.0f, sorted sample %.0f", q, got, want)
		}
	}
	if h.quantile(1) != xs[len(xs)-1] || h.max != xs[len(xs)-1] {
		t.Errorf("max: got %d/%d, want %d", h.quantile(1), h.max, xs[len(xs)-1])
	}
}

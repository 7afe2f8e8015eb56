package rediscache

import (
	"fmt"
	"io"
	"net/http"
	"testing"
)

// compressBenchCodecs are the codec settings the README's default was
// chosen from.
var compressBenchCodecs = []struct {
	name  string
	level int
}{{"zstd", 1}, {"zstd", 3}, {"gzip", 1}, {"gzip", 5}, {"gzip", 6}}

// BenchmarkCompressEncode compresses a JSON body and encodes the entry, as
// a miss does before its store write; ratio is the stored value's size
// over the body's.
func BenchmarkCompressEncode(b *testing.B) {
	for _, size := range []int{4 << 10, 64 << 10} {
		body := compressJSON(size)
		for _, c := range compressBenchCodecs {
			b.Run(fmt.Sprintf("%s-%d/%dKiB", c.name, c.level, size>>10), func(b *testing.B) {
				comp, err := newCompressor(c.name, c.level)
				if err != nil {
					b.Fatal(err)
				}
				e := sampleEntry()
				e.header.Set("Content-Type", "application/json")
				e.body = body
				var raw []byte
				b.SetBytes(int64(len(body)))
				b.ReportAllocs()
				for b.Loop() {
					raw = comp.compressedCopy(e, nil).appendEncoded(raw)
				}
				b.ReportMetric(float64(len(raw))/float64(len(body)), "ratio")
			})
		}
	}
}

// BenchmarkCompressDecode decodes (and checks) a stored compressed entry,
// as a read from Redis does, and then streams its identity body, as a hit
// for a client that does not take the coding does.
func BenchmarkCompressDecode(b *testing.B) {
	for _, size := range []int{4 << 10, 64 << 10} {
		body := compressJSON(size)
		for _, c := range compressBenchCodecs {
			comp, err := newCompressor(c.name, c.level)
			if err != nil {
				b.Fatal(err)
			}
			e := sampleEntry()
			e.header = http.Header{"Content-Type": {"application/json"}}
			e.body = body
			raw := comp.compressedCopy(e, nil).encode()
			b.Run(fmt.Sprintf("entry/%s-%d/%dKiB", c.name, c.level, size>>10), func(b *testing.B) {
				b.SetBytes(int64(len(body)))
				b.ReportAllocs()
				for b.Loop() {
					if _, err := decodeEntry(raw); err != nil {
						b.Fatal(err)
					}
				}
			})
			d, _ := decodeEntry(raw)
			b.Run(fmt.Sprintf("stream/%s-%d/%dKiB", c.name, c.level, size>>10), func(b *testing.B) {
				b.SetBytes(int64(len(body)))
				b.ReportAllocs()
				for b.Loop() {
					if err := writeDecoded(io.Discard, d.coding, d.body, 0, d.identityLen, d.identityLen); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

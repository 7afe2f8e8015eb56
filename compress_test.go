package rediscache

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// compressJSON is a JSON body of about n bytes that compresses the way API
// answers do: repeated field names, varying values.
func compressJSON(n int) []byte {
	var b bytes.Buffer
	b.WriteString(`{"items":[`)
	for i := 0; b.Len() < n-64; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"id":%d,"name":"item-%d","score":%d.%02d,"active":%t,"tags":["a%d","b%d"]}`, i, i*7919%1000, i*31%977, i%100, i%3 == 0, i%17, i%5)
	}
	b.WriteString(`]}`)
	return b.Bytes()
}

// decodeBody undoes a response's Content-Encoding.
func decodeBody(t *testing.T, resp *http.Response, body string) string {
	t.Helper()
	switch ce := resp.Header.Get("Content-Encoding"); ce {
	case "":
		return body
	case "gzip":
		zr, err := gzip.NewReader(strings.NewReader(body))
		if err != nil {
			t.Fatalf("gzip body: %v", err)
		}
		b, err := io.ReadAll(zr)
		if err != nil {
			t.Fatalf("gzip body: %v", err)
		}
		return string(b)
	case "zstd":
		d, err := zstd.NewReader(nil)
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		b, err := d.DecodeAll([]byte(body), nil)
		if err != nil {
			t.Fatalf("zstd body: %v", err)
		}
		return string(b)
	default:
		t.Fatalf("unexpected Content-Encoding %q", ce)
	}
	return ""
}

// encodeV2 encodes an identity entry in the version 2 format, which had no
// coding fields.
func encodeV2(e *entry) []byte {
	c := *e
	c.coding, c.identityLen, c.etagOfCoded = codingIdentity, 0, false
	raw := c.encode()
	tail := entryTailLen + len(c.body) + len(binary.AppendUvarint(nil, uint64(len(c.body))))
	v2 := append([]byte(nil), raw[:len(raw)-tail-3]...)
	v2 = append(v2, raw[len(raw)-tail:len(raw)-4]...)
	v2[2] = entryVersion2
	return binary.BigEndian.AppendUint32(v2, crc32.Checksum(v2, crcTable))
}

func TestCompressEntryRoundTrip(t *testing.T) {
	body := compressJSON(8 << 10)
	for _, codec := range []string{"zstd", "gzip"} {
		c, err := newCompressor(codec, 0)
		if err != nil {
			t.Fatal(err)
		}
		e := &entry{kind: kindResponse, status: 200, storedAt: time.Now(), header: http.Header{"Content-Type": {"application/json"}}, body: body}
		ce := c.compressedCopy(e, nil)
		if ce == e || ce.coding == codingIdentity {
			t.Fatalf("%s: 8 KiB of JSON was not compressed", codec)
		}
		if float64(len(ce.body)) > 0.4*float64(len(body)) {
			t.Errorf("%s: %d of %d bytes, more than 0.4x", codec, len(ce.body), len(body))
		}
		out, err := decodeEntry(ce.encode())
		if err != nil {
			t.Fatalf("%s: %v", codec, err)
		}
		if out.coding != ce.coding || out.identityLen != int64(len(body)) {
			t.Fatalf("%s: coding %d len %d", codec, out.coding, out.identityLen)
		}
		var got bytes.Buffer
		if err := writeDecoded(&got, out.coding, out.body, 100, 200); err != nil || !bytes.Equal(got.Bytes(), body[100:300]) {
			t.Fatalf("%s: decoded range differs (%v)", codec, err)
		}
		// Small, binary or no-transform bodies stay as they are.
		for _, hdr := range []http.Header{
			{"Content-Type": {"image/png"}},
			{"Content-Type": {"application/json"}, "Cache-Control": {"no-transform"}},
		} {
			if c.compressedCopy(&entry{header: hdr, body: body}, nil).coding != codingIdentity {
				t.Errorf("%s: %v was compressed", codec, hdr)
			}
		}
		if c.compressedCopy(&entry{header: e.header, body: body[:500]}, nil).coding != codingIdentity {
			t.Errorf("%s: 500 bytes were compressed", codec)
		}
	}
}

func TestCompressOldFormatDecodes(t *testing.T) {
	e := &entry{kind: kindResponse, status: 200, storedAt: time.UnixMicro(1700000000000000), header: http.Header{"Etag": {`"x"`}}, body: []byte("old body")}
	out, err := decodeEntry(encodeV2(e))
	if err != nil {
		t.Fatal(err)
	}
	if string(out.body) != "old body" || out.coding != codingIdentity || out.header.Get("ETag") != `"x"` {
		t.Fatalf("v2 entry decoded as %+v", out)
	}
}

func TestCompressAcceptsCoding(t *testing.T) {
	cases := []struct {
		ae     string
		coding string
		want   bool
	}{
		{"", "gzip", false},
		{"gzip", "gzip", true},
		{"gzip, deflate, br, zstd", "zstd", true},
		{"gzip, deflate, br", "zstd", false},
		{"x-gzip", "gzip", true},
		{"*", "zstd", true},
		{"gzip;q=0, *", "gzip", false},
		{"gzip;q=0.5, identity", "gzip", false},
		{"identity;q=0", "zstd", true},
		{"identity;q=0, zstd;q=0", "zstd", false},
		{"*;q=0", "gzip", false},
		{"identity", "gzip", false},
		{"GZIP ; Q=1", "gzip", true},
	}
	for _, c := range cases {
		var vals []string
		if c.ae != "" {
			vals = []string{c.ae}
		}
		if got := acceptsCoding(vals, c.coding); got != c.want {
			t.Errorf("Accept-Encoding %q, coding %s: %v, want %v", c.ae, c.coding, got, c.want)
		}
	}
}

func TestCompressFormETags(t *testing.T) {
	cases := []struct {
		etag         string
		ofCoded      bool
		coded, ident string
	}{
		{`"a"`, false, `"a-zstd"`, `"a"`},
		{`W/"a"`, false, `W/"a"`, `W/"a"`},
		{`"a-zstd"`, true, `"a-zstd"`, `"a"`},
		{`"a"`, true, `"a"`, ""},
		{"", false, "", ""},
	}
	for _, c := range cases {
		coded, ident := formETags(c.etag, "zstd", c.ofCoded)
		if coded != c.coded || ident != c.ident {
			t.Errorf("formETags(%q, %v) = %q, %q; want %q, %q", c.etag, c.ofCoded, coded, ident, c.coded, c.ident)
		}
	}
}

// compressEnv serves a fixed JSON body with an ETag at /api/doc and counts
// upstream calls.
func compressEnv(t *testing.T, ns, settings string, body []byte) *rfcEnv {
	t.Helper()
	e := rfcStart(t, ns, settings+"\n\t\troute api /api/* 5m")
	e.u.Handle("/api/doc", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("ETag", `"doc1"`)
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		_, _ = w.Write(body)
	})
	return e
}

// TestCompressClients: one compressed entry serves gzip, zstd, identity and
// identity;q=0 clients, each with the bytes it asked for.
func TestCompressClients(t *testing.T) {
	body := compressJSON(8 << 10)
	for _, codec := range []string{"zstd", "gzip"} {
		t.Run(codec, func(t *testing.T) {
			e := compressEnv(t, "cmp"+codec, "\t\tcompress "+codec, body)
			clients := []struct {
				ae, want string
			}{
				{"gzip, deflate, br, zstd", codec},
				{"gzip", map[string]string{"gzip": "gzip", "zstd": ""}[codec]},
				{"zstd", map[string]string{"gzip": "", "zstd": "zstd"}[codec]},
				{"", ""},
				{"identity", ""},
				{"identity;q=0", codec},
			}
			for round := range 2 {
				for _, c := range clients {
					var hdrs []string
					if c.ae != "" {
						hdrs = append(hdrs, "Accept-Encoding: "+c.ae)
					}
					resp, got := e.get(t, "/api/doc", hdrs...)
					if resp.StatusCode != 200 || resp.Header.Get("Content-Encoding") != c.want {
						t.Fatalf("round %d, Accept-Encoding %q: status %d, Content-Encoding %q, want %q", round, c.ae, resp.StatusCode, resp.Header.Get("Content-Encoding"), c.want)
					}
					if cl := resp.Header.Get("Content-Length"); cl != strconv.Itoa(len(got)) {
						t.Fatalf("Accept-Encoding %q: Content-Length %s for %d bytes", c.ae, cl, len(got))
					}
					if !strings.Contains(strings.Join(resp.Header.Values("Vary"), ","), "Accept-Encoding") {
						t.Fatalf("Accept-Encoding %q: no Vary: Accept-Encoding", c.ae)
					}
					if decodeBody(t, resp, got) != string(body) {
						t.Fatalf("Accept-Encoding %q: body differs", c.ae)
					}
					if round == 1 && resp.Header.Get("X-Cache") != "HIT" {
						t.Fatalf("Accept-Encoding %q: X-Cache %q on round 2", c.ae, resp.Header.Get("X-Cache"))
					}
				}
			}
			if n := e.u.Calls("GET", "/api/doc"); n != 1 {
				t.Fatalf("%d upstream calls; one entry should serve every client", n)
			}
			keys := e.r.Keys("cmp" + codec + "*")
			var stored int
			for _, k := range keys {
				if v, err := e.r.Client().Get(context.Background(), k).Bytes(); err == nil && len(v) > stored {
					stored = len(v)
				}
			}
			if stored == 0 || float64(stored) > 0.4*float64(len(body)) {
				t.Fatalf("largest stored value %d bytes for a %d-byte body", stored, len(body))
			}
		})
	}
}

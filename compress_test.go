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

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
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
		if err := writeDecoded(&got, out.coding, out.body, 100, 200, out.identityLen); err != nil || !bytes.Equal(got.Bytes(), body[100:300]) {
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
		if c.compressedCopy(&entry{header: e.header, body: body[:compressMinSize]}, nil).coding != codingIdentity {
			t.Errorf("%s: 1 KiB was compressed", codec)
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

func gzipBytes(t *testing.T, b []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	_, _ = zw.Write(b)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestCompressUpstreamGzip: an answer the upstream sent gzip-coded is
// stored as it came, served as it is to gzip clients and decoded for the
// others, from one entry.
func TestCompressUpstreamGzip(t *testing.T) {
	body := compressJSON(6 << 10)
	coded := gzipBytes(t, body)
	e := rfcStart(t, "cmpup", "\t\troute api /api/* 5m")
	e.u.Handle("/api/gz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Vary", "Accept-Encoding")
		w.Header().Set("ETag", `"v1-gzip"`)
		w.Header().Set("Content-Encoding", "gzip")
		_, _ = w.Write(coded)
	})
	resp, got := e.get(t, "/api/gz", "Accept-Encoding: gzip")
	if resp.Header.Get("Content-Encoding") != "gzip" || got != string(coded) {
		t.Fatalf("miss: Content-Encoding %q, %d bytes", resp.Header.Get("Content-Encoding"), len(got))
	}
	for _, ae := range []string{"gzip, br", "", "zstd", "identity"} {
		var hdrs []string
		if ae != "" {
			hdrs = append(hdrs, "Accept-Encoding: "+ae)
		}
		resp, got := e.get(t, "/api/gz", hdrs...)
		if resp.Header.Get("X-Cache") != "HIT" {
			t.Fatalf("Accept-Encoding %q: X-Cache %q", ae, resp.Header.Get("X-Cache"))
		}
		wantCE, wantTag := "", `"v1"`
		if strings.Contains(ae, "gzip") {
			wantCE, wantTag = "gzip", `"v1-gzip"`
			if got != string(coded) {
				t.Fatalf("gzip client did not get the stored bytes")
			}
		}
		if ce := resp.Header.Get("Content-Encoding"); ce != wantCE || resp.Header.Get("ETag") != wantTag {
			t.Fatalf("Accept-Encoding %q: Content-Encoding %q, ETag %s", ae, ce, resp.Header.Get("ETag"))
		}
		if decodeBody(t, resp, got) != string(body) || resp.Header.Get("Content-Length") != strconv.Itoa(len(got)) {
			t.Fatalf("Accept-Encoding %q: wrong body or Content-Length", ae)
		}
	}
	if n := e.u.Calls("GET", "/api/gz"); n != 1 {
		t.Fatalf("%d upstream calls, want 1", n)
	}
}

// TestCompressRangeHeadAnd304: ranges, HEAD and conditional requests apply
// to the representation sent, whose ETag differs from the other form's.
func TestCompressRangeHeadAnd304(t *testing.T) {
	body := compressJSON(8 << 10)
	e := compressEnv(t, "cmprh", "\t\tcompress zstd 3", body)
	respZ, coded := e.get(t, "/api/doc", "Accept-Encoding: zstd")
	if respZ.Header.Get("Content-Encoding") != "zstd" || respZ.Header.Get("ETag") != `"doc1-zstd"` {
		t.Fatalf("zstd client: Content-Encoding %q, ETag %s", respZ.Header.Get("Content-Encoding"), respZ.Header.Get("ETag"))
	}
	respI, _ := e.get(t, "/api/doc")
	if respI.Header.Get("ETag") != `"doc1"` {
		t.Fatalf("identity client: ETag %s", respI.Header.Get("ETag"))
	}

	t.Run("range", func(t *testing.T) {
		resp, got := e.get(t, "/api/doc", "Range: bytes=100-1099")
		if resp.StatusCode != 206 || got != string(body[100:1100]) || resp.Header.Get("Content-Range") != "bytes 100-1099/"+strconv.Itoa(len(body)) {
			t.Fatalf("identity range: %d %q", resp.StatusCode, resp.Header.Get("Content-Range"))
		}
		resp, got = e.get(t, "/api/doc", "Range: bytes=10-49", "Accept-Encoding: zstd")
		if resp.StatusCode != 206 || got != coded[10:50] || resp.Header.Get("Content-Encoding") != "zstd" ||
			resp.Header.Get("Content-Range") != "bytes 10-49/"+strconv.Itoa(len(coded)) {
			t.Fatalf("coded range: %d %q", resp.StatusCode, resp.Header.Get("Content-Range"))
		}
		resp, got = e.get(t, "/api/doc", "Range: bytes=-20", "If-Range: \"doc1\"")
		if resp.StatusCode != 206 || got != string(body[len(body)-20:]) {
			t.Fatalf("If-Range with the identity ETag: %d", resp.StatusCode)
		}
		resp, _ = e.get(t, "/api/doc", "Range: bytes=-20", "If-Range: \"doc1\"", "Accept-Encoding: zstd")
		if resp.StatusCode != 200 {
			t.Fatalf("If-Range with the other form's ETag: %d, want the whole 200", resp.StatusCode)
		}
	})

	t.Run("head", func(t *testing.T) {
		resp, got := e.do(t, http.MethodHead, "/api/doc", nil, "Accept-Encoding: zstd")
		if got != "" || resp.Header.Get("Content-Length") != strconv.Itoa(len(coded)) || resp.Header.Get("Content-Encoding") != "zstd" {
			t.Fatalf("coded HEAD: Content-Length %s, Content-Encoding %q", resp.Header.Get("Content-Length"), resp.Header.Get("Content-Encoding"))
		}
		resp, got = e.do(t, http.MethodHead, "/api/doc", nil)
		if got != "" || resp.Header.Get("Content-Length") != strconv.Itoa(len(body)) || resp.Header.Get("Content-Encoding") != "" {
			t.Fatalf("identity HEAD: Content-Length %s", resp.Header.Get("Content-Length"))
		}
	})

	t.Run("304", func(t *testing.T) {
		for _, c := range []struct{ inm, ae, etag string }{
			{`"doc1-zstd"`, "zstd", `"doc1-zstd"`},
			{`"doc1"`, "", `"doc1"`},
			{`"doc1"`, "zstd", `"doc1-zstd"`}, // as Caddy's encode passes it on
			{`"doc1-zstd"`, "", `"doc1"`},
		} {
			hdrs := []string{"If-None-Match: " + c.inm}
			if c.ae != "" {
				hdrs = append(hdrs, "Accept-Encoding: "+c.ae)
			}
			resp, _ := e.get(t, "/api/doc", hdrs...)
			if resp.StatusCode != 304 || resp.Header.Get("ETag") != c.etag {
				t.Fatalf("If-None-Match %s, Accept-Encoding %q: %d, ETag %s", c.inm, c.ae, resp.StatusCode, resp.Header.Get("ETag"))
			}
		}
		if resp, _ := e.get(t, "/api/doc", `If-None-Match: "doc2-zstd"`, "Accept-Encoding: zstd"); resp.StatusCode != 200 {
			t.Fatalf("another ETag: %d", resp.StatusCode)
		}
	})
	if n := e.u.Calls("GET", "/api/doc"); n != 1 {
		t.Fatalf("%d upstream calls, want 1", n)
	}
}

// TestCompressOldFormatEntry: a version 2 entry in Redis (written before
// this version) is served; an entry of an unknown version is a miss.
func TestCompressOldFormatEntry(t *testing.T) {
	body := compressJSON(4 << 10)
	e := compressEnv(t, "cmpold", "\t\tvalidated_copies off", body)
	e.get(t, "/api/doc")
	ctx := context.Background()
	key, cur := storedCodedEntry(t, e.r, "cmpold", nil)
	var plain bytes.Buffer
	if err := writeDecoded(&plain, cur.coding, cur.body, 0, cur.identityLen, cur.identityLen); err != nil {
		t.Fatal(err)
	}
	old := *cur
	old.coding, old.identityLen = codingIdentity, 0
	old.body = []byte(strings.Replace(plain.String(), `"items"`, `"olden"`, 1))
	if err := e.r.Client().Set(ctx, key, encodeV2(&old), time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	for _, ae := range []string{"", "gzip, zstd"} {
		resp, got := e.get(t, "/api/doc", "Accept-Encoding: "+ae)
		if resp.Header.Get("X-Cache") != "HIT" || got != string(old.body) || resp.Header.Get("Content-Encoding") != "" {
			t.Fatalf("v2 entry, Accept-Encoding %q: X-Cache %q, Content-Encoding %q", ae, resp.Header.Get("X-Cache"), resp.Header.Get("Content-Encoding"))
		}
	}
	future := encodeV2(&old)
	future[2] = 9
	if err := e.r.Client().Set(ctx, key, future, time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	resp, got := e.get(t, "/api/doc", "Accept-Encoding: zstd")
	if resp.StatusCode != 200 || resp.Header.Get("X-Cache") != "MISS" || decodeBody(t, resp, got) != string(body) {
		t.Fatalf("unknown version: %d, X-Cache %q", resp.StatusCode, resp.Header.Get("X-Cache"))
	}
}

// TestCompressWithEncode: Caddy's encode before or after redis_cache in a
// route; every client gets a body it accepts that decodes to the original,
// hits do not reach the upstream, and conditional requests get 304s.
func TestCompressWithEncode(t *testing.T) {
	body := compressJSON(8 << 10)
	for _, order := range []string{"cache-outside", "encode-outside"} {
		t.Run(order, func(t *testing.T) {
			e := rfcStartSite(t, func(r *redisServer, u *upstream) string {
				cache := rfcCacheBlock(r, "cmpenc", "\t\troute api /api/* 5m")
				// In a route block, handlers run in the order written.
				inner := "\t\tencode zstd gzip\n\t\t" + cache + "\n"
				if order == "cache-outside" {
					inner = "\t\t" + cache + "\n\t\tencode zstd gzip\n"
				}
				return "\troute {\n" + inner + "\t\treverse_proxy " + rfcHost(u) + "\n\t}"
			})
			e.u.Handle("/api/doc", func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				w.Header().Set("ETag", `"e1"`)
				_, _ = w.Write(body)
			})
			for round := range 2 {
				for _, ae := range []string{"gzip", "zstd", "gzip, deflate, br, zstd", ""} {
					var hdrs []string
					if ae != "" {
						hdrs = append(hdrs, "Accept-Encoding: "+ae)
					}
					resp, got := e.get(t, "/api/doc", hdrs...)
					ce := resp.Header.Get("Content-Encoding")
					if resp.StatusCode != 200 || (ce != "" && !strings.Contains(ae, ce)) {
						t.Fatalf("%s, Accept-Encoding %q: %d, Content-Encoding %q", order, ae, resp.StatusCode, ce)
					}
					if decodeBody(t, resp, got) != string(body) {
						t.Fatalf("%s, Accept-Encoding %q: body differs", order, ae)
					}
					if round == 1 && resp.Header.Get("X-Cache") != "HIT" {
						t.Fatalf("%s, Accept-Encoding %q: X-Cache %q on round 2", order, ae, resp.Header.Get("X-Cache"))
					}
					etag := resp.Header.Get("ETag")
					if etag == "" {
						t.Fatalf("%s, Accept-Encoding %q: no ETag", order, ae)
					}
					if ce != "" && etag == `"e1"` {
						t.Fatalf("%s, Accept-Encoding %q: coded form has the identity ETag", order, ae)
					}
					r304, _ := e.get(t, "/api/doc", append(hdrs, "If-None-Match: "+etag)...)
					if r304.StatusCode != 304 {
						t.Fatalf("%s, Accept-Encoding %q, If-None-Match %s: %d", order, ae, etag, r304.StatusCode)
					}
				}
			}
			t.Logf("%s: %d upstream calls", order, e.u.Calls("GET", "/api/doc"))
			if n := e.u.Calls("GET", "/api/doc"); n != 1 {
				t.Fatalf("%s: %d upstream calls, want 1", order, n)
			}
		})
	}
}

func TestCompressConfig(t *testing.T) {
	for _, c := range []struct{ in, err string }{
		{"compress zstd 3", ""},
		{"compress gzip", ""},
		{"compress off", ""},
		{"compress brotli", `compress "brotli": must be 'zstd', 'gzip' or 'off'`},
		{"compress gzip 12", `compress gzip level "12"`},
		{"compress off 3", `compress off level "3"`},
		{"compress", "wrong argument count"},
	} {
		h := new(Handler)
		err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("redis_cache {\n" + c.in + "\n}"))
		if c.err == "" {
			if err != nil {
				t.Errorf("%q: %v", c.in, err)
			} else if h.Namespace = "ns"; h.Validate() != nil {
				t.Errorf("%q: Validate: %v", c.in, h.Validate())
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), c.err) {
			t.Errorf("%q: error %v, want %q", c.in, err, c.err)
		}
	}
	for _, h := range []*Handler{{Compress: "lz4"}, {Compress: "gzip", CompressLevel: 10}, {CompressLevel: -1}} {
		h.Namespace = "ns"
		if err := h.Validate(); err == nil || !strings.Contains(err.Error(), "compress") {
			t.Errorf("%+v: Validate error %v", h, err)
		}
	}
}

// TestCompressUpstreamCodings: gzip and zstd answers become coded entries
// that no longer vary on Accept-Encoding; br (no decoder here), several
// codings and undecodable bodies stay plain variants, as before.
func TestCompressUpstreamCodings(t *testing.T) {
	body := compressJSON(4 << 10)
	z, _ := newCompressor("zstd", 0)
	h := &Handler{MaxEntrySize: 1 << 20}
	h.compressor, _ = newCompressor("gzip", 0)
	r, _ := http.NewRequest("GET", "http://x/api", nil)
	r.Header.Set("Accept-Encoding", "gzip, br")
	for _, c := range []struct {
		ce    string
		body  []byte
		coded bool
	}{
		{"gzip", gzipBytes(t, body), true},
		{"zstd", z.compress(nil, body), true},
		{"br", []byte("not really brotli"), false},
		{"gzip, br", []byte("two codings"), false},
		{"gzip", []byte("not gzip at all"), false},
		{"", body, true}, // compressed here
	} {
		hdr := http.Header{"Content-Type": {"application/json"}, "Vary": {"Accept-Encoding, Accept-Language"}}
		if c.ce != "" {
			hdr.Set("Content-Encoding", c.ce)
		}
		vary := []string{"Accept-Encoding", "Accept-Language"}
		res := &fetched{entry: &entry{kind: kindResponse, status: 200, header: hdr, body: c.body, vary: vary}, vary: vary}
		h.codeForStore(res, r)
		coded := res.entry.coding != codingIdentity
		if coded != c.coded || (len(res.vary) == 1) != c.coded || (hasHeader(res.entry.header, "Content-Encoding") == coded) {
			t.Errorf("Content-Encoding %q: coding %d, vary %v, header %v", c.ce, res.entry.coding, res.vary, res.entry.header)
		}
		if coded && res.entry.identityLen != int64(len(body)) {
			t.Errorf("Content-Encoding %q: identity length %d", c.ce, res.entry.identityLen)
		}
	}
}

// TestCompressCorruptFrameNeverServedWhole: serving does not decode a
// stored frame before it starts (its checksum held), so a frame that fails
// anyway is found mid-body. The client must never get, as a whole answer,
// bytes that are not the origin's, for a whole body or a range: the
// connection is cut (a client that had read nothing yet may retry, and
// then gets a fresh miss). The URI's entries are purged, and the next
// request is a miss with the right body.
func TestCompressCorruptFrameNeverServedWhole(t *testing.T) {
	body := compressJSON(256 << 10)
	for _, codec := range []string{"gzip", "zstd"} {
		t.Run(codec, func(t *testing.T) {
			ns := "cmpbad" + codec
			e := compressEnv(t, ns, "\t\tvalidated_copies off\n\t\tcompress "+codec, body)
			e.get(t, "/api/doc")
			var written []byte // the corrupt value last put in Redis
			for _, c := range []struct{ rangeHdr, want string }{
				{"", string(body)},
				// A range that ends after the wrong byte but before the
				// checksum: the decoder has handed out the whole span by
				// the time it knows.
				{"Range: bytes=0-" + strconv.Itoa(len(body)-5), string(body[:len(body)-4])},
			} {
				ctx := context.Background()
				key, cur := storedCodedEntry(t, e.r, ns, written)
				bad := *cur
				bad.body = corruptedFrame(t, codec, body)
				written = bad.encode()
				if err := e.r.Client().Set(ctx, key, written, time.Minute).Err(); err != nil {
					t.Fatal(err)
				}
				var hdrs []string
				if c.rangeHdr != "" {
					hdrs = append(hdrs, c.rangeHdr)
				}
				req, err := e.c.NewRequest(http.MethodGet, "/api/doc", nil, hdrs...)
				if err != nil {
					t.Fatal(err)
				}
				resp, got, err := e.c.DoE(req)
				if err == nil && (got != c.want || resp.Header.Get("X-Cache") == "HIT") {
					t.Fatalf("%q: a corrupt frame was served as a whole answer: status %d, %d bytes, X-Cache %q",
						c.rangeHdr, resp.StatusCode, len(got), resp.Header.Get("X-Cache"))
				}
				if !e.c.WaitForLog("stored coded body failed to decode", 5*time.Second) {
					t.Fatalf("%q: no error logged", c.rangeHdr)
				}
				resp, got = e.get(t, "/api/doc")
				if xc := resp.Header.Get("X-Cache"); (xc != "MISS" && xc != "HIT") || got != string(body) {
					t.Fatalf("%q: after the corrupt frame: X-Cache %q, body intact %v", c.rangeHdr, resp.Header.Get("X-Cache"), got == string(body))
				}
			}
		})
	}
}

// corruptedFrame returns a frame of the codec that decodes, at full
// length, to bytes other than want, and whose checksum (gzip's CRC-32,
// zstd's content checksum) is want's: the decoder finds out only at the
// very end. That is the case where streaming must not have sent every
// byte before it knows.
func corruptedFrame(t *testing.T, codec string, want []byte) []byte {
	t.Helper()
	c, err := newCompressor(codec, 0)
	if err != nil {
		t.Fatal(err)
	}
	wrong := bytes.Clone(want)
	wrong[len(wrong)-10] ^= 0x01
	frame, right := c.compress(nil, wrong), c.compress(nil, want)
	sum := 4 // zstd: the content checksum ends the frame
	if codec == "gzip" {
		sum = 8 // CRC-32, then the length
	}
	copy(frame[len(frame)-sum:len(frame)-sum+4], right[len(right)-sum:])
	r, release, err := decodedReader(c.coding, frame)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	if _, err := io.ReadAll(r); err == nil {
		t.Fatalf("%s: the doctored frame decodes without an error", codec)
	}
	return frame
}

// TestCompressDecodedCopy: the first identity client of a held coded
// entry leaves its decoded body with the validated copy; later identity
// clients (whole bodies and ranges) get those bytes, and once Redis holds
// another value under the key, they get the new value's bytes, never the
// old decoded ones.
func TestCompressDecodedCopy(t *testing.T) {
	body := compressJSON(64 << 10)
	ns := "cmpdec"
	e := compressEnv(t, ns, "", body)
	ctx := context.Background()
	e.get(t, "/api/doc", "Accept-Encoding: gzip")
	key, cur := storedCodedEntry(t, e.r, ns, nil)
	for i := range 3 {
		resp, got := e.get(t, "/api/doc")
		if resp.Header.Get("X-Cache") != "HIT" || got != string(body) || resp.Header.Get("Content-Encoding") != "" {
			t.Fatalf("identity hit %d: X-Cache %q, Content-Encoding %q, body intact %v", i, resp.Header.Get("X-Cache"), resp.Header.Get("Content-Encoding"), got == string(body))
		}
	}
	if resp, got := e.get(t, "/api/doc", "Range: bytes=100-199"); resp.StatusCode != 206 || got != string(body[100:200]) {
		t.Fatalf("range of the decoded copy: %d %q", resp.StatusCode, got)
	}

	// Another instance stores a new answer under the key.
	newer := bytes.ReplaceAll(body, []byte(`"items"`), []byte(`"itemz"`))
	if bytes.Equal(newer, body) {
		t.Fatal("the test body has no \"items\"")
	}
	c, err := newCompressor("gzip", 0)
	if err != nil {
		t.Fatal(err)
	}
	next := *cur
	next.body, next.identityLen = c.compress(nil, newer), int64(len(newer))
	if err := e.r.Client().Set(ctx, key, next.encode(), time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		resp, got := e.get(t, "/api/doc")
		if resp.Header.Get("X-Cache") != "HIT" || got != string(newer) {
			t.Fatalf("identity hit %d after the value changed: X-Cache %q, new body %v, old body %v", i, resp.Header.Get("X-Cache"), got == string(newer), got == string(body))
		}
	}
	resp, got := e.get(t, "/api/doc", "Accept-Encoding: gzip")
	if resp.Header.Get("Content-Encoding") != "gzip" || decodeBody(t, resp, got) != string(newer) {
		t.Fatalf("gzip hit after the value changed: Content-Encoding %q", resp.Header.Get("Content-Encoding"))
	}
	if n := e.u.Calls("GET", "/api/doc"); n != 1 {
		t.Fatalf("%d upstream calls, want 1", n)
	}
}

// storedCodedEntry waits (≤ 5 s: a miss's store write follows its answer)
// for a coded response entry under ns's keys, other than the value
// skip, and returns its key and the entry. Staged values of store writes
// in progress are not entries.
func storedCodedEntry(t *testing.T, r *redisServer, ns string, skip []byte) (string, *entry) {
	t.Helper()
	ctx := context.Background()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		for _, k := range r.Keys(ns + ":*") {
			if strings.Contains(k, ":_staged:") || strings.HasPrefix(k, ns+":_") {
				continue
			}
			raw, err := r.Client().Get(ctx, k).Bytes()
			if err != nil || bytes.Equal(raw, skip) {
				continue
			}
			if d, err := decodeEntry(raw); err == nil && d.kind == kindResponse && d.coding != codingIdentity {
				return k, d
			}
		}
	}
	t.Fatalf("no coded entry stored (keys %v)", r.Keys(ns+"*"))
	return "", nil
}

// TestCompressDecodedCopyTooLarge: an upstream's gzip answer may decode to
// far more than it stores. When the decoded body would not fit in a
// validated copy, identity clients get it decoded each time and the copy
// of the coded entry stays held (it is not dropped for the decoded body
// that could not join it).
func TestCompressDecodedCopyTooLarge(t *testing.T) {
	body := bytes.Repeat([]byte(`{"k":"0123456789abcdef"},`), (1<<20)/25) // 1 MiB, compresses ~100x
	coded := gzipBytes(t, body)
	e := rfcStart(t, "cmpbig", "\t\tvalidated_copies 512KiB\n\t\troute api /api/* 5m")
	e.u.Handle("/api/big", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Encoding", "gzip")
		_, _ = w.Write(coded)
	})
	e.get(t, "/api/big", "Accept-Encoding: gzip")
	storedCodedEntry(t, e.r, "cmpbig", nil)
	const hits = 6
	for i := range hits {
		resp, got := e.get(t, "/api/big")
		if resp.Header.Get("X-Cache") != "HIT" || got != string(body) {
			t.Fatalf("identity hit %d: X-Cache %q, %d of %d bytes", i, resp.Header.Get("X-Cache"), len(got), len(body))
		}
	}
	lines := metricLines(t, e.c, `caddy_redis_cache_validated_copy_checks_total{outcome="unchanged"}`)
	if n := sumSamples(t, lines); n < hits-1 {
		t.Fatalf("%v hits from the held copy of %d, want at least %d: the copy was dropped (%q)", n, hits, hits-1, lines)
	}
}

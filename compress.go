package rediscache

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"sync"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// Content codings an entry's body may be stored in. A coded entry's header
// carries no Content-Encoding: the coding is a field of the entry, and
// serving adds the field only when the client gets the coded bytes.
const (
	codingIdentity byte = 0
	codingGzip     byte = 1
	codingZstd     byte = 2
)

// Compression defaults (see Handler.Compress).
const (
	defaultCompress      = "gzip"
	defaultZstdLevel     = 1
	defaultGzipLevel     = 1
	compressMinSize      = 1024
	compressMinSavingPct = 10 // stored compressed only when at least this much smaller
)

var errCodedBody = errors.New("corrupt coded body")

func codingName(c byte) string {
	switch c {
	case codingGzip:
		return "gzip"
	case codingZstd:
		return "zstd"
	}
	return ""
}

// codingFromName maps a Content-Encoding value to a coding the cache can
// decode, or reports false.
func codingFromName(name string) (byte, bool) {
	switch strings.ToLower(strings.TrimSpace(name)) {
	case "gzip", "x-gzip":
		return codingGzip, true
	case "zstd":
		return codingZstd, true
	case "", "identity":
		return codingIdentity, true
	}
	return 0, false
}

// compressor compresses bodies on their way to the store. It is safe for
// concurrent use.
type compressor struct {
	coding byte
	level  int
	zenc   *zstd.Encoder
	gzPool sync.Pool
}

// newCompressor returns the compressor for a codec name and level (0: the
// codec's default), or nil for "off".
func newCompressor(name string, level int) (*compressor, error) {
	switch name {
	case "off":
		return nil, nil
	case "zstd":
		if level == 0 {
			level = defaultZstdLevel
		}
		enc, err := zstd.NewWriter(nil,
			zstd.WithEncoderLevel(zstd.EncoderLevelFromZstd(level)),
			zstd.WithEncoderConcurrency(1),
			zstd.WithZeroFrames(true))
		if err != nil {
			return nil, err
		}
		return &compressor{coding: codingZstd, level: level, zenc: enc}, nil
	case "gzip":
		if level == 0 {
			level = defaultGzipLevel
		}
		if _, err := gzip.NewWriterLevel(io.Discard, level); err != nil {
			return nil, err
		}
		return &compressor{coding: codingGzip, level: level}, nil
	}
	return nil, fmt.Errorf("unknown codec %q", name)
}

// validCompressLevel reports whether level suits the codec (0 is its
// default).
func validCompressLevel(codec string, level int) bool {
	switch codec {
	case "zstd":
		return level >= 0 && level <= 22
	case "gzip":
		return level >= 0 && level <= 9
	}
	return level == 0
}

// compress appends the coded form of src to dst.
func (c *compressor) compress(dst, src []byte) []byte {
	if c.coding == codingZstd {
		return c.zenc.EncodeAll(src, dst)
	}
	buf := bytes.NewBuffer(dst)
	zw, _ := c.gzPool.Get().(*gzip.Writer)
	if zw == nil {
		zw, _ = gzip.NewWriterLevel(buf, c.level)
	} else {
		zw.Reset(buf)
	}
	_, _ = zw.Write(src)
	_ = zw.Close()
	c.gzPool.Put(zw)
	return buf.Bytes()
}

// compressedCopy returns e with its body compressed when that pays: a body
// of a compressible media type, longer than compressMinSize, that
// shrinks by compressMinSavingPct or more. Otherwise it returns e itself.
// The copy shares e's header; dst is scratch space for the coded body.
func (c *compressor) compressedCopy(e *entry, dst []byte) *entry {
	if c == nil || e.coding != codingIdentity || len(e.body) <= compressMinSize || !compressibleResponse(e.header) {
		return e
	}
	coded := c.compress(dst[:0], e.body)
	if len(coded) > len(e.body)*(100-compressMinSavingPct)/100 {
		return e
	}
	ce := *e
	ce.body = coded
	ce.coding = c.coding
	ce.identityLen = int64(len(e.body))
	return &ce
}

// compressibleResponse reports whether a response's body is worth
// compressing: a textual media type, no content coding already, and no
// no-transform from the origin (RFC 9111 §5.2.2.6).
func compressibleResponse(hdr http.Header) bool {
	if hasHeader(hdr, "Content-Encoding") || hasHeader(hdr, "Content-Range") {
		return false
	}
	if parseCacheControl(hdr.Values("Cache-Control")).has("no-transform") {
		return false
	}
	return compressibleType(hdr.Get("Content-Type"))
}

func compressibleType(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return false
	}
	if strings.HasPrefix(mt, "text/") || strings.HasSuffix(mt, "+json") || strings.HasSuffix(mt, "+xml") {
		return true
	}
	switch mt {
	case "application/json", "application/x-ndjson", "application/javascript",
		"application/x-javascript", "application/ecmascript", "application/xml",
		"application/xhtml+xml", "application/wasm", "application/graphql",
		"application/x-www-form-urlencoded", "application/csv",
		"image/svg+xml", "image/x-icon", "image/bmp",
		"font/ttf", "font/otf", "application/vnd.ms-fontobject":
		return true
	}
	return false
}

// Decoders are pooled: a zstd decoder with concurrency 1 decodes streams
// synchronously and starts no goroutines.
var (
	zstdDecoders sync.Pool
	gzipReaders  sync.Pool
)

// maxDecodeWindow bounds the memory a zstd frame may make the decoder use.
const maxDecodeWindow = 8 << 20

// decodedReader returns a reader of body's decoded bytes and a function
// that releases it.
func decodedReader(coding byte, body []byte) (io.Reader, func(), error) {
	switch coding {
	case codingZstd:
		d, _ := zstdDecoders.Get().(*zstd.Decoder)
		if d == nil {
			var err error
			d, err = zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(maxDecodeWindow), zstd.WithDecoderLowmem(true))
			if err != nil {
				return nil, nil, err
			}
		}
		if err := d.Reset(bytes.NewReader(body)); err != nil {
			zstdDecoders.Put(d)
			return nil, nil, errCodedBody
		}
		return d, func() { _ = d.Reset(nil); zstdDecoders.Put(d) }, nil
	case codingGzip:
		zr, _ := gzipReaders.Get().(*gzip.Reader)
		var err error
		if zr == nil {
			zr, err = gzip.NewReader(bytes.NewReader(body))
		} else {
			err = zr.Reset(bytes.NewReader(body))
		}
		if err != nil {
			return nil, nil, errCodedBody
		}
		return zr, func() { gzipReaders.Put(zr) }, nil
	}
	return nil, nil, errCodedBody
}

// decodedLength decodes body without keeping it and returns its decoded
// length, or an error when the body is not one intact frame of its coding.
// limit bounds the decoded length.
func decodedLength(coding byte, body []byte, limit int64) (int64, error) {
	r, release, err := decodedReader(coding, body)
	if err != nil {
		return 0, err
	}
	defer release()
	n, err := io.Copy(io.Discard, io.LimitReader(r, limit+1))
	if err != nil || n > limit {
		return 0, errCodedBody
	}
	return n, nil
}

// writeDecoded writes n decoded bytes of body, starting skip bytes in, to
// w. The decoded body is streamed, never held whole. whole is the decoded
// length the entry claims. The frame is decoded to its end, and the last
// byte of the span is written only once the frame has decoded without an
// error (checksums included) to exactly whole bytes: a client never gets
// all the bytes it was promised from a frame that turns out bad. It
// returns errCodedBody for such a frame, and w's error when w fails.
func writeDecoded(w io.Writer, coding byte, body []byte, skip, n, whole int64) error {
	r, release, err := decodedReader(coding, body)
	if err != nil {
		return err
	}
	defer release()
	if skip > 0 {
		if _, err := io.CopyN(io.Discard, r, skip); err != nil {
			return errCodedBody
		}
	}
	sw := &spanWriter{w: w, left: n}
	if wt, ok := r.(io.WriterTo); ok {
		_, err = wt.WriteTo(sw)
	} else {
		_, err = io.Copy(sw, r)
	}
	switch {
	case sw.err != nil:
		return sw.err
	case err != nil || sw.held != (n > 0) || skip+n+sw.beyond != whole:
		return errCodedBody
	}
	if sw.held {
		if _, err := w.Write([]byte{sw.last}); err != nil {
			return err
		}
	}
	return nil
}

// spanWriter passes on the first left bytes written to it but the last,
// which it holds, and counts the bytes beyond them.
type spanWriter struct {
	w      io.Writer
	left   int64
	last   byte
	held   bool
	beyond int64
	err    error
}

func (sw *spanWriter) Write(p []byte) (int, error) {
	if sw.left == 0 {
		sw.beyond += int64(len(p))
		return len(p), nil
	}
	span := p
	if int64(len(span)) >= sw.left {
		span = p[:sw.left]
		sw.beyond += int64(len(p) - len(span))
		sw.last, sw.held = span[len(span)-1], true
		span = span[:len(span)-1]
	}
	if len(span) > 0 {
		if _, err := sw.w.Write(span); err != nil {
			sw.err = err
			return 0, err
		}
	}
	sw.left -= int64(len(span))
	if sw.held {
		sw.left = 0
	}
	return len(p), nil
}

// parseCompress reads "compress zstd|gzip|off [<level>]".
func parseCompress(d *caddyfile.Dispenser, h *Handler) error {
	args := d.RemainingArgs()
	if len(args) < 1 || len(args) > 2 {
		return d.ArgErr()
	}
	switch args[0] {
	case "zstd", "gzip", "off":
		h.Compress = args[0]
	default:
		return d.Errf("compress %q: must be 'zstd', 'gzip' or 'off'", args[0])
	}
	if len(args) == 2 {
		level, err := strconv.Atoi(args[1])
		if err != nil || level < 1 || !validCompressLevel(args[0], level) {
			return d.Errf("compress %s level %q: must be 1-22 for zstd, 1-9 for gzip, none for off", args[0], args[1])
		}
		h.CompressLevel = level
	}
	return nil
}

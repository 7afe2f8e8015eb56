package rediscache

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"net/http"
	"sync"
	"time"
	"unsafe"
)

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
	// decoded is a coded body's identity bytes, on a validated copy that an
	// identity client has asked for: later ones are sent these instead of
	// decoding again. Never stored.
	decoded []byte
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
// not decoded to check it. Reads for serving pass false: the value's
// checksum holds, its writer made or checked the frame, and serving checks
// it again as it decodes (writeDecoded).
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
		// A coded body is checked whole here, for inspection; serving
		// checks it as it decodes instead (writeDecoded).
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

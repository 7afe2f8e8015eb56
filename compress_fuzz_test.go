package rediscache

import (
	"bytes"
	"net/http"
	"testing"
)

// FuzzCompressedEntry: a coded entry whose frame is corrupt, truncated or
// of the wrong length decodes as an error (a miss); one that decodes is
// then streamed to the client whole, without an error, at the length it
// claims. So a client never gets a partial body, and nothing panics.
func FuzzCompressedEntry(f *testing.F) {
	body := compressJSON(3000)
	for _, codec := range []string{"zstd", "gzip"} {
		c, err := newCompressor(codec, 0)
		if err != nil {
			f.Fatal(err)
		}
		coded := c.compress(nil, body)
		f.Add(c.coding, uint32(len(body)), coded)
		f.Add(c.coding, uint32(len(body)-1), coded)
		f.Add(c.coding, uint32(len(body)), coded[:len(coded)-5])
		flipped := bytes.Clone(coded)
		flipped[len(flipped)/2] ^= 0x40
		f.Add(c.coding, uint32(len(body)), flipped)
		f.Add(c.coding, uint32(len(body)), append(bytes.Clone(coded), 0, 1, 2))
	}
	f.Add(byte(7), uint32(3), []byte("abc"))
	f.Add(codingZstd, uint32(0), []byte{})
	f.Fuzz(func(t *testing.T, coding byte, claimed uint32, frame []byte) {
		e := &entry{kind: kindResponse, status: 200, header: http.Header{"Content-Type": {"application/json"}},
			body: frame, coding: coding, identityLen: int64(claimed)}
		d, err := decodeEntry(e.encode())
		if err != nil {
			return
		}
		if d.coding == codingIdentity {
			if !bytes.Equal(d.body, frame) {
				t.Fatal("identity body changed")
			}
			return
		}
		var out bytes.Buffer
		if err := writeDecoded(&out, d.coding, d.body, 0, d.identityLen, d.identityLen); err != nil {
			t.Fatalf("an entry that decoded failed to stream: %v", err)
		}
		if int64(out.Len()) != d.identityLen {
			t.Fatalf("streamed %d bytes, entry says %d", out.Len(), d.identityLen)
		}
		if d.identityLen > 1 {
			var part bytes.Buffer
			if err := writeDecoded(&part, d.coding, d.body, 1, d.identityLen-1, -1); err != nil || !bytes.Equal(part.Bytes(), out.Bytes()[1:]) {
				t.Fatalf("range of a decoded entry differs (%v)", err)
			}
		}
	})
}

package rediscache

import (
	"bytes"
	"errors"
	"net/http"
	"testing"
)

// FuzzCompressedEntry: a coded entry whose frame is corrupt, truncated or
// of the wrong length fails the checked decode (inspection, the stores'
// intake); serving, which trusts the checksum and does not decode first,
// still never writes more than the entry claims, and says so whenever the
// frame does not decode to exactly that: the handler then cuts the
// connection, so a client never gets a short body as a whole one. Nothing
// panics.
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
		f.Add(c.coding, uint32(len(body)+1), coded)
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
		raw := e.encode()
		served, err := decodeEntryChecked(raw, false)
		if err != nil {
			t.Fatalf("an intact value failed the unchecked decode: %v", err)
		}
		checked, checkErr := decodeEntry(raw)
		if served.coding == codingIdentity {
			if checkErr != nil || !bytes.Equal(checked.body, frame) {
				t.Fatal("identity body changed")
			}
			return
		}
		var out bytes.Buffer
		err = writeDecoded(&out, served.coding, served.body, 0, served.identityLen, served.identityLen)
		if int64(out.Len()) > served.identityLen || (err != nil && served.identityLen > 0 && int64(out.Len()) >= served.identityLen) {
			t.Fatalf("streamed %d bytes (error %v), entry says %d", out.Len(), err, served.identityLen)
		}
		if (err == nil) != (checkErr == nil) {
			t.Fatalf("serving says %v, the checked decode says %v", err, checkErr)
		}
		if err != nil {
			if !errors.Is(err, errCodedBody) {
				t.Fatalf("a bad frame gave %v, not errCodedBody", err)
			}
			return
		}
		if int64(out.Len()) != served.identityLen {
			t.Fatalf("streamed %d bytes, entry says %d", out.Len(), served.identityLen)
		}
		if served.identityLen > 1 {
			var part bytes.Buffer
			if err := writeDecoded(&part, served.coding, served.body, 1, served.identityLen-1, served.identityLen); err != nil || !bytes.Equal(part.Bytes(), out.Bytes()[1:]) {
				t.Fatalf("range of a decoded entry differs (%v)", err)
			}
			part.Reset()
			if err := writeDecoded(&part, served.coding, served.body, 0, 1, served.identityLen); err != nil || !bytes.Equal(part.Bytes(), out.Bytes()[:1]) {
				t.Fatalf("first byte of a decoded entry differs (%v)", err)
			}
		}
	})
}

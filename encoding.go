package rediscache

import (
	"errors"
	"io"
	"net/http"
	"strings"
)

// An entry whose body is coded (gzip or zstd, compressed by the cache or
// sent so by the upstream) has two representations: the coded bytes as
// stored, and the identity bytes they decode to. A client whose
// Accept-Encoding allows the coding gets the stored bytes as they are;
// any other client gets them decoded while they are written. Both carry
// Vary: Accept-Encoding, and their strong ETags differ (RFC 9110 §8.8.3.3):
// the coded form's is the identity form's with "-gzip" or "-zstd" appended
// inside the quotes, the convention of Caddy's encode handler, so that the
// two agree whichever of them made the coded form.

// representation is the form of an entry a response carries.
type representation struct {
	e     *entry
	coded bool  // the stored coded bytes, as they are
	size  int64 // the length of the body sent
	// etag is the served form's ETag ("" when it has none); altETag the
	// other form's, which If-None-Match also accepts.
	etag, altETag string
}

// selectRepresentation chooses the form of e for the request and sets the
// header fields that describe it in hdr, which holds e's header.
func (cr *cacheRequest) selectRepresentation(hdr http.Header, e *entry) representation {
	if e.coding == codingIdentity {
		if e.plainOf {
			addVaryAcceptEncoding(hdr)
		}
		return representation{e: e, size: int64(len(e.body)), etag: hdr.Get("ETag")}
	}
	name := codingName(e.coding)
	rep := representation{e: e, coded: acceptsCoding(cr.r.Header.Values("Accept-Encoding"), name)}
	codedTag, identityTag := formETags(e.header.Get("ETag"), name, e.etagOfCoded)
	if rep.coded {
		rep.size = int64(len(e.body))
		rep.etag, rep.altETag = codedTag, identityTag
		hdr.Set("Content-Encoding", name)
	} else {
		rep.size = e.identityLen
		rep.etag, rep.altETag = identityTag, codedTag
	}
	if rep.etag != "" {
		hdr.Set("ETag", rep.etag)
	} else {
		hdr.Del("ETag")
	}
	addVaryAcceptEncoding(hdr)
	return rep
}

func addVaryAcceptEncoding(hdr http.Header) {
	if !varyNamesAcceptEncoding(hdr) {
		// Capped, so appending never writes into the stored entry's slice.
		vary := hdr.Values("Vary")
		hdr["Vary"] = append(vary[:len(vary):len(vary)], "Accept-Encoding")
	}
}

// formETags returns the ETags of the coded and the identity form of an
// entry whose stored ETag is etag. A weak ETag is the same for both: weak
// validators may be shared by representations that are semantically
// equivalent. When the upstream sent the coded form, its ETag is the coded
// form's, and the identity form's is only known when the upstream followed
// the suffix convention; otherwise the identity form has none.
func formETags(etag, coding string, ofCoded bool) (coded, identity string) {
	tag, weak, ok := parseEntityTag(etag)
	if !ok {
		if ofCoded {
			return etag, ""
		}
		return "", etag
	}
	if weak {
		return etag, etag
	}
	suffix := "-" + coding + `"`
	if ofCoded {
		if strings.HasSuffix(tag, suffix) {
			return etag, strings.TrimSuffix(tag, suffix) + `"`
		}
		return etag, ""
	}
	return strings.TrimSuffix(tag, `"`) + suffix, etag
}

func varyNamesAcceptEncoding(hdr http.Header) bool {
	return headerHasToken(hdr.Values("Vary"), "Accept-Encoding")
}

// notModified answers If-None-Match against the served form, accepting
// the other form's ETag too: Caddy's encode handler, when it wraps the
// cache, strips its "-gzip" suffix from If-None-Match before the cache
// sees it, and either tag names the same stored response. The 304 then
// carries the served form's ETag.
func (rep representation) notModified(r *http.Request, hdr http.Header) bool {
	if notModified(r, hdr) {
		return true
	}
	inm := r.Header.Values("If-None-Match")
	return len(inm) > 0 && rep.altETag != "" && etagMatches(strings.Join(inm, ", "), rep.altETag)
}

// write sends n bytes of the representation's body, from offset first. It
// returns errCodedBody when a stored coded body fails to decode.
func (rep representation) write(w io.Writer, first, n int64) error {
	if n <= 0 {
		return nil
	}
	switch {
	case rep.e.coding == codingIdentity || rep.coded:
		_, _ = w.Write(rep.e.body[first : first+n])
		return nil
	case rep.e.decoded != nil:
		_, _ = w.Write(rep.e.decoded[first : first+n])
		return nil
	}
	err := writeDecoded(w, rep.e.coding, rep.e.body, first, n, rep.e.identityLen)
	if errors.Is(err, errCodedBody) {
		return err
	}
	return nil
}

// acceptsCoding reports whether a client with these Accept-Encoding values
// is to get a coding's bytes rather than identity ones (RFC 9110 §12.5.3):
// when it accepts the coding at least as much as identity, or refuses
// identity and does not refuse the coding. A request without
// Accept-Encoding gets identity.
func acceptsCoding(values []string, coding string) bool {
	if len(values) == 0 {
		return false
	}
	qCoding, qIdentity, qStar := -1.0, -1.0, -1.0
	for _, v := range values {
		for _, m := range strings.Split(v, ",") {
			m = strings.ToLower(strings.Join(strings.Fields(m), ""))
			name, _, _ := strings.Cut(m, ";")
			q := memberWeight(m)
			switch {
			case name == coding || (coding == "gzip" && name == "x-gzip"):
				qCoding = max(qCoding, q)
			case name == "identity":
				qIdentity = max(qIdentity, q)
			case name == "*":
				qStar = max(qStar, q)
			}
		}
	}
	if qCoding < 0 {
		qCoding = max(qStar, 0)
	}
	if qIdentity < 0 {
		qIdentity = 1
		if qStar == 0 {
			qIdentity = 0
		}
	}
	if qCoding > 0 && qCoding >= qIdentity {
		return true
	}
	return qIdentity == 0 && !refusesCoding(values, coding)
}

// refusesCoding reports whether Accept-Encoding gives the coding q=0,
// by name or through "*".
func refusesCoding(values []string, coding string) bool {
	named, star := false, false
	for _, v := range values {
		for _, m := range strings.Split(v, ",") {
			m = strings.ToLower(strings.Join(strings.Fields(m), ""))
			name, _, _ := strings.Cut(m, ";")
			switch {
			case name == coding || (coding == "gzip" && name == "x-gzip"):
				if memberWeight(m) == 0 {
					return true
				}
				named = true
			case name == "*" && memberWeight(m) == 0:
				star = true
			}
		}
	}
	return star && !named
}

// takeUpstreamCoding turns a storable answer that the upstream sent gzip-
// or zstd-coded into a coded entry, so that it serves every client:
// Content-Encoding moves into the entry, and its decoded length is
// measured once, here (an answer that does not decode stays as it came, a
// plain entry that varies on Accept-Encoding). It reports whether the
// entry now handles content codings itself.
func takeUpstreamCoding(e *entry, limit int64) bool {
	values := e.header.Values("Content-Encoding")
	if len(values) == 0 {
		return e.coding == codingIdentity
	}
	if len(values) != 1 || strings.Contains(values[0], ",") || hasHeader(e.header, "Content-Range") {
		return false
	}
	coding, ok := codingFromName(values[0])
	if !ok {
		return false // br and others: stored as they came
	}
	if coding == codingIdentity {
		e.header.Del("Content-Encoding")
		return true
	}
	n, err := decodedLength(coding, e.body, limit)
	if err != nil {
		return false
	}
	e.header.Del("Content-Encoding")
	e.header.Del("Content-Length")
	e.coding, e.identityLen, e.etagOfCoded = coding, n, true
	return true
}

// withoutAcceptEncoding drops Accept-Encoding from the header names an
// entry is keyed on: an entry that handles codings serves every client.
func withoutAcceptEncoding(names []string) []string {
	out := names[:0:0]
	for _, n := range names {
		if !strings.EqualFold(n, "Accept-Encoding") {
			out = append(out, n)
		}
	}
	return out
}

// codeForStore gives a fetched answer the coding it is stored and shared
// in: an upstream-coded body is taken as it came, an identity body is
// compressed when that pays. An entry that ends up coded handles every
// Accept-Encoding itself, so it is no longer keyed on it.
func (h *Handler) codeForStore(res *fetched, r *http.Request) {
	e := res.entry
	if !takeUpstreamCoding(e, max(16*h.MaxEntrySize, 64<<20)) {
		return
	}
	if e.coding == codingIdentity {
		ce := h.compressor.compressedCopy(e, nil)
		if ce == e {
			return
		}
		plain := *e
		plain.plainOf = true
		res.plain = &plain
		*e = *ce
	}
	if len(res.vary) > 0 {
		res.vary = withoutAcceptEncoding(res.vary)
		e.vary = res.vary
		res.varyValues = varyValues(res.vary, r)
	}
}

// entryFor is the entry a miss's client (or a coalesced waiter) is served
// from: the body before compression for a client that does not take the
// coding, which saves decoding what was just encoded.
func (res *fetched) entryFor(r *http.Request) *entry {
	if res.plain != nil && !acceptsCoding(r.Header.Values("Accept-Encoding"), codingName(res.entry.coding)) {
		return res.plain
	}
	return res.entry
}

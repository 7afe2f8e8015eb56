package rediscache

import (
	"net/http"
	"reflect"
	"testing"
	"time"
)

// Unit tests of the pure RFC 9111 / 9213 / 9110 functions in rfc9111.go.
// Each case names the section it checks.

func TestRFC9111ParseCacheControl(t *testing.T) {
	cases := []struct {
		sec    string
		values []string
		want   cacheControl
	}{
		{"§5.2 directives are case-insensitive", []string{"Max-Age=60, PUBLIC"}, cacheControl{"max-age": "60", "public": ""}},
		{"§5.2 quoted-string argument", []string{`max-age="120"`}, cacheControl{"max-age": "120"}},
		{"§5.2 comma inside a quoted-string", []string{`no-cache="a, b", max-age=5`}, cacheControl{"no-cache": "a, b", "max-age": "5"}},
		{"§5.2 spaces around = are not in the grammar", []string{"max-age = 5, public"}, cacheControl{"public": ""}},
		{"§5.2 space after =", []string{"max-age= 5"}, cacheControl{}},
		{"§4.2.1 duplicate max-age: the most conservative", []string{"max-age=100", "max-age=10"}, cacheControl{"max-age": "10"}},
		{"§4.2.1 duplicate on one line", []string{"max-age=10, max-age=100"}, cacheControl{"max-age": "10"}},
		{"§4.2.1 an invalid duplicate is stale", []string{"max-age=100, max-age=abc"}, cacheControl{"max-age": "abc"}},
		{"§5.2 empty members", []string{" , ,no-store,"}, cacheControl{"no-store": ""}},
	}
	for _, tc := range cases {
		if got := parseCacheControl(tc.values); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: parseCacheControl(%q) = %v, want %v", tc.sec, tc.values, got, tc.want)
		}
	}
}

func TestRFC9111ParseSeconds(t *testing.T) {
	cases := []struct {
		sec  string
		in   string
		want time.Duration
	}{
		{"§1.2.2 delta-seconds", "60", 60 * time.Second},
		{"§5.2 quoted form", `"60"`, 60 * time.Second},
		{"§1.2.2 invalid is zero (stale)", "abc", 0},
		{"§1.2.2 negative is invalid", "-5", 0},
		{"§1.2.2 decimal is invalid", "5.0", 0},
		{"§1.2.2 overflow saturates at 2^31", "99999999999", maxDeltaSeconds * time.Second},
	}
	for _, tc := range cases {
		if got := parseSeconds(tc.in); got != tc.want {
			t.Errorf("%s: parseSeconds(%q) = %v, want %v", tc.sec, tc.in, got, tc.want)
		}
	}
}

func TestRFC9111ParseTargeted(t *testing.T) {
	cases := []struct {
		sec    string
		values []string
		want   cacheControl // nil: the field is ignored
	}{
		{"RFC 9213 §2.1 Integer max-age", []string{"max-age=3600"}, cacheControl{"max-age": "3600"}},
		{"RFC 9213 §2.1 Boolean directives", []string{"no-store, private"}, cacheControl{"no-store": "", "private": ""}},
		{"RFC 9213 §2.1 unknown members are kept and ignored", []string{"foobar, max-age=60"}, cacheControl{"foobar": "", "max-age": "60"}},
		{"RFC 9213 §2.1 wrong type: the directive is ignored", []string{`max-age="10000"`}, cacheControl{}},
		{"RFC 9213 §2.1 false Boolean is absent", []string{"no-store=?0"}, cacheControl{}},
		{"RFC 9213 §2.1 qualified no-cache as an Inner List", []string{`no-cache=("set-cookie")`}, cacheControl{"no-cache": ""}},
		{"RFC 9213 §2.1 parameters are ignored", []string{"max-age=60;foo=bar"}, cacheControl{"max-age": "60"}},
		{"RFC 9213 §2.1 several lines form one Dictionary", []string{"max-age=60", "public"}, cacheControl{"max-age": "60", "public": ""}},
		{"RFC 8941 §4.2 invalid member: whole field ignored", []string{"max-age=10000, &&&&&"}, nil},
		{"RFC 8941 §4.2 space before =", []string{"max-age =100"}, nil},
		{"RFC 8941 §4.2 space after =", []string{"max-age= 100"}, nil},
		{"RFC 8941 §3.2 keys are lower case", []string{"MaX-aGe=3600"}, nil},
		{"RFC 8941 §4.2 trailing comma", []string{"max-age=60,"}, nil},
		{"RFC 9213 §2.2 empty field is ignored", []string{""}, nil},
	}
	for _, tc := range cases {
		got, ok := parseTargeted(tc.values)
		if (tc.want == nil) != !ok || (ok && !reflect.DeepEqual(got, tc.want)) {
			t.Errorf("%s: parseTargeted(%q) = %v, %v; want %v", tc.sec, tc.values, got, ok, tc.want)
		}
	}
}

func TestRFC9111ResponseDirectives(t *testing.T) {
	targets := []string{"CDN-Cache-Control", "Surrogate-Control"}
	cases := []struct {
		sec      string
		hdr      http.Header
		want     cacheControl
		targeted bool
	}{
		{"RFC 9213 §2.2 no targeted field: Cache-Control", http.Header{"Cache-Control": {"max-age=5"}}, cacheControl{"max-age": "5"}, false},
		{"RFC 9213 §2.2 the targeted field replaces Cache-Control", http.Header{"Cache-Control": {"no-store"}, "Cdn-Cache-Control": {"max-age=60"}}, cacheControl{"max-age": "60"}, true},
		{"RFC 9213 §2.2 first in list order wins", http.Header{"Surrogate-Control": {"max-age=1"}, "Cdn-Cache-Control": {"max-age=60"}}, cacheControl{"max-age": "60"}, true},
		{"RFC 9213 §2.2 an invalid field falls through", http.Header{"Cdn-Cache-Control": {"&&"}, "Surrogate-Control": {"max-age=7"}}, cacheControl{"max-age": "7"}, true},
		{"RFC 9213 §2.2 all invalid: Cache-Control", http.Header{"Cdn-Cache-Control": {"&&"}, "Cache-Control": {"private"}}, cacheControl{"private": ""}, false},
	}
	for _, tc := range cases {
		got, targeted := responseDirectives(tc.hdr, targets)
		if !reflect.DeepEqual(got, tc.want) || targeted != tc.targeted {
			t.Errorf("%s: got %v targeted=%v, want %v targeted=%v", tc.sec, got, targeted, tc.want, tc.targeted)
		}
	}
}

func TestRFC9111AgeValue(t *testing.T) {
	cases := []struct {
		sec    string
		values []string
		want   time.Duration
	}{
		{"§5.1 delta-seconds", []string{"100"}, 100 * time.Second},
		{"§5.1 a list: the first member", []string{"7200, 0"}, 7200 * time.Second},
		{"§5.1 a list without space", []string{"7200,0"}, 7200 * time.Second},
		{"§5.1 two lines: the first", []string{"7200", "0"}, 7200 * time.Second},
		{"§5.1 young first", []string{"0, 7200"}, 0},
		{"§5.1 invalid first member: unknown age, stale", []string{"old, 0"}, maxDeltaSeconds * time.Second},
		{"§5.1 suffix: invalid, stale", []string{"7200a"}, maxDeltaSeconds * time.Second},
		{"§5.1 negative: invalid, stale", []string{"-7200"}, maxDeltaSeconds * time.Second},
		{"§5.1 float: invalid, stale", []string{"7200.0"}, maxDeltaSeconds * time.Second},
		{"§1.2.2 overflow saturates", []string{"99999999999"}, maxDeltaSeconds * time.Second},
		{"§5.1 absent", nil, 0},
	}
	for _, tc := range cases {
		if got := ageValue(tc.values); got != tc.want {
			t.Errorf("%s: ageValue(%q) = %v, want %v", tc.sec, tc.values, got, tc.want)
		}
	}
}

func TestRFC9111InitialAge(t *testing.T) {
	resp := time.Date(2030, 1, 1, 12, 0, 0, 500e6, time.UTC)
	req := resp.Add(-2 * time.Second)
	cases := []struct {
		sec  string
		hdr  http.Header
		want time.Duration
	}{
		{"§4.2.3 response delay only", http.Header{}, 2 * time.Second},
		{"§4.2.3 Age plus delay", http.Header{"Age": {"10"}}, 12 * time.Second},
		{"§4.2.3 apparent age from Date", http.Header{"Date": {"Tue, 01 Jan 2030 11:59:00 GMT"}}, 60 * time.Second},
		{"§4.2.3 a Date in the future is age 0", http.Header{"Date": {"Tue, 01 Jan 2030 13:00:00 GMT"}}, 2 * time.Second},
		{"§5.1 a list-valued Age", http.Header{"Age": {"7200, 0"}}, 7202 * time.Second},
	}
	for _, tc := range cases {
		if got := initialAge(tc.hdr, req, resp); got != tc.want {
			t.Errorf("%s: initialAge(%v) = %v, want %v", tc.sec, tc.hdr, got, tc.want)
		}
	}
}

func TestRFC9111ExplicitFreshness(t *testing.T) {
	date := time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)
	inAnHour := []string{"Tue, 01 Jan 2030 13:00:00 GMT"}
	cases := []struct {
		sec      string
		cc       cacheControl
		expires  []string
		want     time.Duration
		explicit bool
	}{
		{"§4.2.1 s-maxage first", cacheControl{"s-maxage": "5", "max-age": "10"}, inAnHour, 5 * time.Second, true},
		{"§4.2.1 then max-age", cacheControl{"max-age": "10"}, inAnHour, 10 * time.Second, true},
		{"§4.2.1 then Expires - Date", cacheControl{}, inAnHour, time.Hour, true},
		{"§5.3 invalid Expires: already expired", cacheControl{}, []string{"0"}, 0, true},
		{"§5.3 several Expires lines: invalid", cacheControl{}, append(inAnHour, inAnHour...), 0, true},
		{"§5.3 Expires in the past", cacheControl{}, []string{"Tue, 01 Jan 2030 11:00:00 GMT"}, 0, true},
		{"§4.2.1 nothing explicit", cacheControl{}, nil, 0, false},
	}
	for _, tc := range cases {
		got, explicit := explicitFreshness(tc.cc, tc.expires, date)
		if got != tc.want || explicit != tc.explicit {
			t.Errorf("%s: got %v explicit=%v, want %v %v", tc.sec, got, explicit, tc.want, tc.explicit)
		}
	}
}

func TestRFC9111HeuristicFreshness(t *testing.T) {
	date := time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)
	cases := []struct {
		sec     string
		lm      time.Time
		percent int
		want    time.Duration
	}{
		{"§4.2.2 10% of the time since Last-Modified", date.Add(-10 * time.Hour), 10, time.Hour},
		{"§4.2.2 capped", date.Add(-100 * 24 * time.Hour), 10, heuristicLimit},
		{"§4.2.2 Last-Modified in the future", date.Add(time.Hour), 10, 0},
		{"§4.2.2 off", date.Add(-10 * time.Hour), 0, 0},
	}
	for _, tc := range cases {
		if got := heuristicFreshness(tc.lm, date, tc.percent, heuristicLimit); got != tc.want {
			t.Errorf("%s: got %v, want %v", tc.sec, got, tc.want)
		}
	}
	for status, want := range map[int]bool{200: true, 301: true, 404: true, 410: true, 302: false, 500: false, 201: false} {
		if heuristicallyCacheable(status) != want {
			t.Errorf("RFC 9110 §15.1: heuristicallyCacheable(%d) = %v", status, !want)
		}
	}
}

func TestRFC9111StorableStatus(t *testing.T) {
	for status, want := range map[int]bool{
		200: true, 299: true, 302: true, 499: true, 500: true, 599: true, // any final status (RFC 9111 §3)
		100: false, 103: false, // interim
		206: false, 304: false, // not complete responses (RFC 9111 §3.3, §4.3.4)
	} {
		if got := storableStatus(status); got != want {
			t.Errorf("storableStatus(%d) = %v, want %v", status, got, want)
		}
	}
}

func TestRFC9111UnderstoodStatus(t *testing.T) {
	for status, want := range map[int]bool{
		200: true, 203: true, 302: true, 307: true, 308: true, 400: true, 404: true,
		500: true, 503: true, 504: true, // RFC 9110 §15
		206: false, 304: false, // only complete responses are stored (RFC 9111 §3.3, §4.3)
		100: false, 299: false, 418: false, 599: false, // unknown: not understood (RFC 9111 §5.2.2.3)
	} {
		if got := understoodStatus(status); got != want {
			t.Errorf("understoodStatus(%d) = %v, want %v", status, got, want)
		}
	}
}

func TestRFC9111ParseHTTPDate(t *testing.T) {
	want := time.Date(1994, 11, 6, 8, 49, 37, 0, time.UTC)
	cases := []struct {
		sec string
		in  string
		ok  bool
	}{
		{"RFC 9110 §5.6.7 IMF-fixdate", "Sun, 06 Nov 1994 08:49:37 GMT", true},
		{"RFC 9110 §5.6.7 rfc850-date", "Sunday, 06-Nov-94 08:49:37 GMT", true},
		{"RFC 9110 §5.6.7 asctime-date", "Sun Nov  6 08:49:37 1994", true},
		{"RFC 9110 §5.6.7 lower-case gmt accepted", "Sun, 06 Nov 1994 08:49:37 gmt", true},
		{"RFC 9110 §5.6.7 one-digit hour", "Sun, 06 Nov 1994 8:49:37 GMT", false},
		{"RFC 9110 §5.6.7 repeated spaces", "Sun, 06  Nov  1994 08:49:37 GMT", false},
		{"RFC 9110 §5.6.7 UTC is not GMT", "Sun, 06 Nov 1994 08:49:37 UTC", false},
		{"RFC 9110 §5.6.7 two-digit year in IMF-fixdate", "Sun, 06 Nov 94 08:49:37 GMT", false},
		{"RFC 9110 §5.6.7 missing comma", "Sun 06 Nov 1994 08:49:37 GMT", false},
		{"RFC 9110 §5.6.7 dashes in IMF-fixdate", "Sun, 06-Nov-1994 08:49:37 GMT", false},
		{"RFC 9110 §5.6.7 periods in the time", "Sun, 06 Nov 1994 08.49.37 GMT", false},
		{"RFC 9110 §5.6.7 no such day", "Sun, 31 Feb 1994 08:49:37 GMT", false},
		{"RFC 9111 §5.3 the value 0", "0", false},
		{"RFC 9110 §5.6.7 empty", "", false},
	}
	for _, tc := range cases {
		got, ok := parseHTTPDate(tc.in)
		if ok != tc.ok || (ok && !got.Equal(want)) {
			t.Errorf("%s: parseHTTPDate(%q) = %v, %v; want ok=%v", tc.sec, tc.in, got, ok, tc.ok)
		}
	}
}

func TestRFC9111NotModified(t *testing.T) {
	lm := "Sun, 06 Nov 1994 08:49:37 GMT"
	stored := http.Header{"Etag": {`"abc"`}, "Last-Modified": {lm}}
	dateOnly := http.Header{"Date": {lm}}
	cases := []struct {
		sec    string
		stored http.Header
		req    []string
		want   bool
	}{
		{"RFC 9110 §13.1.2 strong match", stored, []string{"If-None-Match", `"abc"`}, true},
		{"RFC 9110 §13.1.2 weak comparison", stored, []string{"If-None-Match", `W/"abc"`}, true},
		{"RFC 9110 §13.1.2 list", stored, []string{"If-None-Match", `"x", "abc"`}, true},
		{"RFC 9110 §13.1.2 star", stored, []string{"If-None-Match", `*`}, true},
		{"RFC 9110 §8.8.3 unquoted never matches", stored, []string{"If-None-Match", `abc`}, false},
		{"RFC 9110 §8.8.3 lower-case w/ is not weak", stored, []string{"If-None-Match", `w/"abc"`}, false},
		{"RFC 9110 §13.2.2 If-None-Match wins", stored, []string{"If-None-Match", `"x"`, "If-Modified-Since", lm}, false},
		{"RFC 9110 §13.1.3 If-Modified-Since equal", stored, []string{"If-Modified-Since", lm}, true},
		{"RFC 9110 §13.1.3 earlier", stored, []string{"If-Modified-Since", "Sat, 05 Nov 1994 08:49:37 GMT"}, false},
		{"RFC 9110 §13.1.3 invalid date", stored, []string{"If-Modified-Since", "yesterday"}, false},
		{"RFC 9110 §13.1.3 no Last-Modified: Date", dateOnly, []string{"If-Modified-Since", lm}, true},
	}
	for _, tc := range cases {
		r, _ := http.NewRequest(http.MethodGet, "/", nil)
		for i := 0; i < len(tc.req); i += 2 {
			r.Header.Add(tc.req[i], tc.req[i+1])
		}
		if got := notModified(r, tc.stored); got != tc.want {
			t.Errorf("%s: notModified = %v, want %v", tc.sec, got, tc.want)
		}
	}
}

func TestRFC9111StrongMatch(t *testing.T) {
	cases := []struct {
		sec  string
		a, b string
		want bool
	}{
		{"RFC 9110 §8.8.3.2 both strong and equal", `"a"`, `"a"`, true},
		{"RFC 9110 §8.8.3.2 weak never matches strongly", `W/"a"`, `"a"`, false},
		{"RFC 9110 §8.8.3.2 different", `"a"`, `"b"`, false},
		{"RFC 9110 §8.8.3 unquoted", `a`, `a`, false},
	}
	for _, tc := range cases {
		if got := strongMatch(tc.a, tc.b); got != tc.want {
			t.Errorf("%s: strongMatch(%q, %q) = %v", tc.sec, tc.a, tc.b, got)
		}
	}
}

func TestRFC9111SelectRange(t *testing.T) {
	cases := []struct {
		sec     string
		header  string
		size    int64
		want    byteRange
		outcome rangeOutcome
	}{
		{"RFC 9110 §14.1.2 int-range", "bytes=0-4", 26, byteRange{0, 4}, rangeSatisfiable},
		{"RFC 9110 §14.1.2 last-pos past the end is clipped", "bytes=20-100", 26, byteRange{20, 25}, rangeSatisfiable},
		{"RFC 9110 §14.1.2 open-ended", "bytes=20-", 26, byteRange{20, 25}, rangeSatisfiable},
		{"RFC 9110 §14.1.2 suffix", "bytes=-3", 26, byteRange{23, 25}, rangeSatisfiable},
		{"RFC 9110 §14.1.2 suffix longer than the representation", "bytes=-100", 26, byteRange{0, 25}, rangeSatisfiable},
		{"RFC 9110 §14.1 unit is case-insensitive", "Bytes=0-0", 26, byteRange{0, 0}, rangeSatisfiable},
		{"RFC 9110 §14.1.1 first-pos past the end", "bytes=30-", 26, byteRange{}, rangeUnsatisfiable},
		{"RFC 9110 §14.1.1 zero-length suffix", "bytes=-0", 26, byteRange{}, rangeUnsatisfiable},
		{"RFC 9110 §14.1.1 empty representation", "bytes=0-", 0, byteRange{}, rangeUnsatisfiable},
		{"RFC 9110 §14.2 one satisfiable of two", "bytes=0-1, 40-50", 26, byteRange{0, 1}, rangeSatisfiable},
		{"RFC 9110 §14.2 several ranges: the whole 200", "bytes=0-1,5-6", 26, byteRange{}, rangeIgnored},
		{"RFC 9110 §14.2 last before first: invalid, ignored", "bytes=5-1", 26, byteRange{}, rangeIgnored},
		{"RFC 9110 §14.2 garbage: ignored", "bytes=abc", 26, byteRange{}, rangeIgnored},
		{"RFC 9110 §14.2 another unit: ignored", "items=0-1", 26, byteRange{}, rangeIgnored},
		{"RFC 9110 §14.2 no ranges: ignored", "bytes=", 26, byteRange{}, rangeIgnored},
	}
	for _, tc := range cases {
		got, outcome := selectRange(tc.header, tc.size)
		if got != tc.want || outcome != tc.outcome {
			t.Errorf("%s: selectRange(%q, %d) = %v, %v; want %v, %v", tc.sec, tc.header, tc.size, got, outcome, tc.want, tc.outcome)
		}
	}
}

func TestRFC9111IfRangeMatches(t *testing.T) {
	lm := "Sun, 06 Nov 1994 08:49:37 GMT"
	later := "Sun, 06 Nov 1994 09:49:37 GMT"
	stored := http.Header{"Etag": {`"v1"`}, "Last-Modified": {lm}, "Date": {later}}
	weakDate := http.Header{"Last-Modified": {lm}, "Date": {lm}}
	cases := []struct {
		sec    string
		stored http.Header
		value  string
		want   bool
	}{
		{"RFC 9110 §13.1.5 matching strong entity-tag", stored, `"v1"`, true},
		{"RFC 9110 §13.1.5 other entity-tag", stored, `"v0"`, false},
		{"RFC 9110 §13.1.5 weak entity-tag never matches", stored, `W/"v1"`, false},
		{"RFC 9110 §13.1.5 date equal to a strong Last-Modified", stored, lm, true},
		{"RFC 9110 §13.1.5 other date", stored, later, false},
		{"RFC 9110 §8.8.2.2 Last-Modified equal to Date is weak", weakDate, lm, false},
		{"RFC 9110 §13.1.5 invalid value", stored, "yesterday", false},
	}
	for _, tc := range cases {
		if got := ifRangeMatches(tc.value, tc.stored); got != tc.want {
			t.Errorf("%s: ifRangeMatches(%q) = %v, want %v", tc.sec, tc.value, got, tc.want)
		}
	}
}

func TestRFC9111NormalizeWeightedList(t *testing.T) {
	cases := []struct {
		sec      string
		values   []string
		anyOrder bool
		want     string
	}{
		{"RFC 9110 §12.5.3 whitespace and case", []string{"GZIP ,  br"}, true, "br, gzip"},
		{"RFC 9110 §12.5.3 order of codings carries no meaning", []string{"br, gzip"}, true, "br, gzip"},
		{"RFC 9110 §12.4.2 weights order members", []string{"gzip;q=0.5, br"}, true, "br, gzip;q=0.5"},
		{"RFC 9110 §12.4.2 whitespace around ;", []string{"gzip ; q=0.5", "br"}, true, "br, gzip;q=0.5"},
		{"RFC 9110 §12.5.4 language tags are case-insensitive", []string{"EN-us, fr;q=0.5"}, false, "en-us, fr;q=0.5"},
		{"RFC 9110 §12.5.4 weights order languages", []string{"fr;q=0.5, en-US"}, false, "en-us, fr;q=0.5"},
		{"RFC 9110 §12.5.4 equal weights keep their order", []string{"fr, en"}, false, "fr, en"},
		{"RFC 9110 §5.6.1 empty members", []string{", gzip,,"}, true, "gzip"},
	}
	for _, tc := range cases {
		if got := normalizeWeightedList(tc.values, tc.anyOrder); got != tc.want {
			t.Errorf("%s: normalizeWeightedList(%q) = %q, want %q", tc.sec, tc.values, got, tc.want)
		}
	}
}

func TestRFC9111ParseSFDictionary(t *testing.T) {
	cases := []struct {
		sec  string
		in   string
		want []sfMember // nil: a parse error
	}{
		{"RFC 8941 §4.2.2 Boolean true by default", "a", []sfMember{{"a", sfBoolean, "1"}}},
		{"RFC 8941 §4.2.8 explicit Boolean", "a=?0", []sfMember{{"a", sfBoolean, "0"}}},
		{"RFC 8941 §4.2.4 Integer", "a=-12", []sfMember{{"a", sfInteger, "-12"}}},
		{"RFC 8941 §4.2.4 Integer of 16 digits", "a=1234567890123456", nil},
		{"RFC 8941 §4.2.4 Decimal", "a=1.5", []sfMember{{"a", sfDecimal, ""}}},
		{"RFC 8941 §4.2.4 Decimal with four fraction digits", "a=1.5555", nil},
		{"RFC 8941 §4.2.5 String with escapes", `a="x\"y"`, []sfMember{{"a", sfString, ""}}},
		{"RFC 8941 §4.2.5 String with a bad escape", `a="x\y"`, nil},
		{"RFC 8941 §4.2.6 Token", "a=foo/bar", []sfMember{{"a", sfToken, ""}}},
		{"RFC 8941 §4.2.7 Byte Sequence", "a=:aGk=:", []sfMember{{"a", sfBytes, ""}}},
		{"RFC 8941 §4.1.1 Inner List with parameters", `a=("x" y);p=1`, []sfMember{{"a", sfInnerList, ""}}},
		{"RFC 8941 §4.2.2 last duplicate wins", "a=1, a=2", []sfMember{{"a", sfInteger, "2"}}},
		{"RFC 8941 §4.2.2 OWS around commas", "a=1 ,\tb", []sfMember{{"a", sfInteger, "1"}, {"b", sfBoolean, "1"}}},
		{"RFC 8941 §4.2.3.3 key must start lower-case", "A=1", nil},
		{"RFC 8941 §4.2.2 empty member", "a,,b", nil},
	}
	for _, tc := range cases {
		got, ok := parseSFDictionary(tc.in)
		if (tc.want == nil) != !ok || (ok && !reflect.DeepEqual(got, tc.want)) {
			t.Errorf("%s: parseSFDictionary(%q) = %v, %v; want %v", tc.sec, tc.in, got, ok, tc.want)
		}
	}
}

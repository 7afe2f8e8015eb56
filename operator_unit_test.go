package rediscache

import (
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestOperatorUnitTagFields(t *testing.T) {
	h := &Handler{}
	h.compileTagHeaders()
	hdr := http.Header{}
	hdr.Set("Surrogate-Key", " a  b\tc ")
	hdr.Set("Cache-Tag", "c, d,, e f")
	hdr.Set("X-Cache-Tags", "a,g")
	got := strings.Join(h.responseTags(hdr), "|")
	if got != "a|b|c|d|e f|g" {
		t.Fatalf("tags %q", got)
	}
	h.stripTagHeaders(hdr)
	if len(hdr) != 0 {
		t.Fatalf("left %v", hdr)
	}
	h = &Handler{TagsHeader: "x-mine"}
	h.compileTagHeaders()
	if strings.Join(h.tagHeaders, ",") != "X-Mine" {
		t.Fatalf("tags_header X-Mine gives %v", h.tagHeaders)
	}
}

func TestOperatorUnitQueryFilter(t *testing.T) {
	rt := &Route{IgnoreQuery: []string{"utm_*", "gclid"}}
	for in, want := range map[string]string{
		"":                            "",
		"a=1&utm_source=x&b=2&gclid=": "a=1&b=2",
		"utm%5Fsource=x&a=1":          "a=1",
		"gclidx=1":                    "gclidx=1",
	} {
		if got := rt.filterQuery(in); got != want {
			t.Errorf("ignore %q -> %q, want %q", in, got, want)
		}
	}
	rt = &Route{KeyQuery: []string{"q", "page"}}
	if got := rt.filterQuery("q=a&x=1&page=2&q=b"); got != "q=a&page=2&q=b" {
		t.Errorf("key_query -> %q", got)
	}
	if err := validateQueryParams([]string{"[bad"}, nil); err == nil {
		t.Errorf("bad glob accepted")
	}
}

func TestOperatorUnitRefreshWindow(t *testing.T) {
	e := &entry{freshFor: 100 * time.Second}
	cases := []struct {
		rt   *Route
		e    entry
		want time.Duration
	}{
		{&Route{}, *e, 10 * time.Second},
		{&Route{RefreshAhead: -1}, *e, 0},
		{&Route{RefreshAhead: 30 * 1e9}, *e, 30 * time.Second},
		{&Route{StaleWhileRevalidate: 1e9}, *e, 0},
		{&Route{}, entry{freshFor: 100 * time.Second, swr: time.Second}, 0},
		{&Route{}, entry{freshFor: 100 * time.Second, noCache: true}, 0},
	}
	for i := range cases {
		c := &cases[i]
		if got := c.rt.refreshWindow(&c.e); got != c.want {
			t.Errorf("case %d: window %v, want %v", i, got, c.want)
		}
	}
}

func TestOperatorUnitRedisURLError(t *testing.T) {
	for _, raw := range []string{"redis://u:s3cretpw@h:notaport/0", "redis://:s3cretpw@h:6379/abc", "redis://u:s3cr%zzet@h"} {
		msg := redisURLError(raw, errors.New("parse \""+raw+"\": bad")).Error()
		if strings.Contains(msg, "s3cr") {
			t.Errorf("%q: message reveals the password: %s", raw, msg)
		}
	}
}

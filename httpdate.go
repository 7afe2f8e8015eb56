package rediscache

// A strict parser for HTTP-dates (RFC 9110 §5.6.7), the syntax under the
// date rules of rfc9111.go (Expires, Date, Last-Modified, If-Modified-Since,
// If-Range).

import (
	"strings"
	"time"
)

var (
	dayNames   = []string{"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"}
	longDays   = []string{"Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"}
	monthNames = []string{"Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"}
)

// parseHTTPDate reads an HTTP-date strictly: IMF-fixdate, or the obsolete
// rfc850-date and asctime-date. Unlike http.ParseTime it refuses one-digit
// hours, repeated spaces and other near misses, which a cache must treat
// as invalid (an Expires in the past, RFC 9111 §5.3). The one leniency is
// a lower-case "gmt", which some origins send.
func parseHTTPDate(s string) (time.Time, bool) {
	switch {
	case len(s) == 29 && s[3] == ',':
		return parseIMFFixdate(s)
	case len(s) == 24 && s[3] == ' ':
		return parseASCTime(s)
	default:
		return parseRFC850(s)
	}
}

// parseIMFFixdate reads "Sun, 06 Nov 1994 08:49:37 GMT".
func parseIMFFixdate(s string) (time.Time, bool) {
	if !oneOf(s[:3], dayNames) || s[3:5] != ", " || s[7] != ' ' || s[11] != ' ' || s[16] != ' ' || s[25] != ' ' || !isGMT(s[26:]) {
		return time.Time{}, false
	}
	day, ok1 := digits(s[5:7])
	year, ok2 := digits(s[12:16])
	if !ok1 || !ok2 {
		return time.Time{}, false
	}
	return buildDate(year, s[8:11], day, s[17:25])
}

// parseRFC850 reads "Sunday, 06-Nov-94 08:49:37 GMT".
func parseRFC850(s string) (time.Time, bool) {
	name, rest, ok := strings.Cut(s, ", ")
	if !ok || !oneOf(name, longDays) || len(rest) != 22 || rest[2] != '-' || rest[6] != '-' || rest[9] != ' ' || rest[18] != ' ' || !isGMT(rest[19:]) {
		return time.Time{}, false
	}
	day, ok1 := digits(rest[:2])
	yy, ok2 := digits(rest[7:9])
	if !ok1 || !ok2 {
		return time.Time{}, false
	}
	// A two-digit year more than 50 years ahead is in the past century.
	year := time.Now().Year()/100*100 + yy
	if year > time.Now().Year()+50 {
		year -= 100
	}
	return buildDate(year, rest[3:6], day, rest[10:18])
}

// parseASCTime reads "Sun Nov  6 08:49:37 1994".
func parseASCTime(s string) (time.Time, bool) {
	if !oneOf(s[:3], dayNames) || s[7] != ' ' || s[10] != ' ' || s[19] != ' ' {
		return time.Time{}, false
	}
	dd := s[8:10]
	if dd[0] == ' ' {
		dd = "0" + dd[1:]
	}
	day, ok1 := digits(dd)
	year, ok2 := digits(s[20:])
	if !ok1 || !ok2 {
		return time.Time{}, false
	}
	return buildDate(year, s[4:7], day, s[11:19])
}

// buildDate checks and assembles the parts of an HTTP-date; hh:mm:ss must
// have two digits each, and the day must exist in its month.
func buildDate(year int, month string, day int, clock string) (time.Time, bool) {
	m := indexOf(month, monthNames)
	if m < 0 || len(clock) != 8 || clock[2] != ':' || clock[5] != ':' {
		return time.Time{}, false
	}
	hh, ok1 := digits(clock[:2])
	mm, ok2 := digits(clock[3:5])
	ss, ok3 := digits(clock[6:])
	if !ok1 || !ok2 || !ok3 || hh > 23 || mm > 59 || ss > 60 || day < 1 {
		return time.Time{}, false
	}
	t := time.Date(year, time.Month(m+1), day, hh, mm, min(ss, 59), 0, time.UTC)
	if t.Day() != day {
		return time.Time{}, false // 31 Feb
	}
	return t, true
}

func isGMT(s string) bool { return s == "GMT" || s == "gmt" }

func oneOf(s string, names []string) bool { return indexOf(s, names) >= 0 }

func indexOf(s string, names []string) int {
	for i, n := range names {
		if s == n {
			return i
		}
	}
	return -1
}

// digits reads a fixed-width run of ASCII digits.
func digits(s string) (int, bool) {
	if s == "" {
		return 0, false
	}
	n := 0
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
		n = n*10 + int(s[i]-'0')
	}
	return n, true
}

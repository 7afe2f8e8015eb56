package rediscache

import (
	"strings"
	"time"
)

// Generations. A generation key holds "hard:soft". Every entry records the
// value of each generation it depends on (the namespace, its route, its URI,
// its tags) and is served only while all of them still hold that value, so
// bumping one key invalidates every entry that recorded it, in one write.
//
// The hard part is the store's clock, in microseconds, at the key's last
// hard purge, or a birth value ("b" and random hex) given when a store
// created the key. An absent key is unknown, never "not purged": Redis may
// have evicted it, or come back from an older snapshot without it, and a
// purged entry must not come back with it. So an entry is stored only
// together with every generation it records: a key that was absent at
// lookup is created with a fresh birth value in the same atomic write.

// genMissing is how an absent generation key reads.
const genMissing = ""

// newBirthGen is the value of a generation key that a store creates. It is
// random, so that a key evicted and created again never repeats a value
// that older entries recorded.
func newBirthGen() string { return "b" + randomToken()[:16] + ":0" }

// isFreshBirth reports a birth value no purge has touched since (a soft
// purge counts up its second part).
func isFreshBirth(gen string) bool {
	return strings.HasPrefix(gen, "b") && strings.HasSuffix(gen, ":0")
}

func hardPart(gen string) string {
	h, _, _ := strings.Cut(gen, ":")
	return h
}

// storeGuard is what must still hold for an entry to be written.
type storeGuard struct {
	// gens must still have the recorded values; an absent one whose
	// recorded value is a birth value is created with it.
	gens []genStamp
	// late is the index from which gens were read after the lookup (tags
	// the answer named): those must also not have been hard purged after
	// the lookup began.
	late int
	// lookupAt is when the lookup began: purges since may postdate the
	// answer's computation. See purgeWindow.
	lookupAt time.Time
	// patterns is the key of the recent pattern and key purges.
	patterns string
	// genTTL is how long a created generation key lives.
	genTTL time.Duration
}

// storeOutcome is what became of a guarded write.
type storeOutcome int

// The values are those storeScript returns.
const (
	outcomeStored        storeOutcome = 0
	outcomePurged        storeOutcome = 1 // a generation it records was purged since the lookup
	outcomeGenLost       storeOutcome = 2 // a generation it recorded vanished (evicted, restarted)
	outcomePatternPurged storeOutcome = 3 // a pattern or key purge since the lookup covers it
	outcomeStagedLost    storeOutcome = 4 // the staged value expired before it was moved
	// outcomeBirthConflict: another write created a generation this one
	// meant to create. Not a purge: the write may adopt that value.
	outcomeBirthConflict storeOutcome = 5
	outcomeTooLate       storeOutcome = 6 // the answer took longer than purges are remembered
)

// reason is the metric label of a refused write.
func (o storeOutcome) reason() string {
	switch o {
	case outcomePurged:
		return "purged"
	case outcomeGenLost:
		return "generation-lost"
	case outcomePatternPurged:
		return "pattern-purged"
	case outcomeStagedLost:
		return "staged-lost"
	case outcomeTooLate:
		return "too-late"
	case outcomeBirthConflict:
		return "birth-conflict"
	}
	return "stored"
}

// purgeMemory is how long pattern and key purges are remembered for the
// answers in flight when they happened. An answer whose upstream took
// longer is not stored: no record would say whether a purge covers it.
const purgeMemory = 10 * time.Minute

// purgeMemoryLimit bounds how many recent pattern and key purges are kept.
const purgeMemoryLimit = 1000

// purgeWindow tells a guarded write which purges count as after its
// lookup, in two ways that the store combines by taking the earlier:
// elapsed, the time since the lookup on this Caddy's clock (the store
// subtracts it from its own clock when the write runs, which is only ever
// later than the lookup, by however long the write waited to be sent), and
// wall, the lookup's time on this Caddy's wall clock (exact when the
// clocks agree: on one host they are one clock, across hosts NTP keeps
// them within milliseconds, and a Caddy clock running ahead falls back to
// the first). No margin is added to wall: a request made just after a
// purge returned must still be stored. The margin on elapsed covers clocks
// running at slightly different rates (NTP slews by at most 500 ppm).
func purgeWindow(lookupAt time.Time) (elapsed time.Duration, wall int64) {
	e := time.Since(lookupAt)
	return e + time.Millisecond + e/2000, lookupAt.UnixMicro()
}

// globToLuaPattern turns a Redis glob into an anchored Lua pattern, so that
// a guarded write can tell inside Redis whether a recent pattern purge
// covers the key it writes.
func globToLuaPattern(glob string) string {
	var b strings.Builder
	b.WriteByte('^')
	for i := 0; i < len(glob); i++ {
		c := glob[i]
		switch c {
		case '*':
			b.WriteString(".*")
		case '?':
			b.WriteByte('.')
		case '[':
			end := classEnd(glob, i+1)
			if end < 0 {
				b.WriteString("%[")
				continue
			}
			b.WriteString(luaClass(glob[i+1 : end]))
			i = end
		case '\\':
			if i+1 < len(glob) {
				i++
				c = glob[i]
			}
			writeLuaLiteral(&b, c)
		default:
			writeLuaLiteral(&b, c)
		}
	}
	b.WriteByte('$')
	return b.String()
}

// classEnd finds the ']' closing a glob class whose body starts at i.
func classEnd(glob string, i int) int {
	if i < len(glob) && glob[i] == '^' {
		i++
	}
	for j := i; j < len(glob); j++ {
		switch {
		case glob[j] == '\\':
			j++
		case glob[j] == ']' && j > i:
			return j
		}
	}
	return -1
}

// luaClass renders a glob class body as a Lua set.
func luaClass(body string) string {
	var b strings.Builder
	b.WriteByte('[')
	if strings.HasPrefix(body, "^") {
		b.WriteByte('^')
		body = body[1:]
	}
	for i := 0; i < len(body); i++ {
		c := body[i]
		switch {
		case c == '\\' && i+1 < len(body):
			i++
			writeLuaLiteral(&b, body[i])
		case c == '-' && i > 0 && i+1 < len(body):
			b.WriteByte('-')
		default:
			writeLuaLiteral(&b, c)
		}
	}
	b.WriteByte(']')
	return b.String()
}

func writeLuaLiteral(b *strings.Builder, c byte) {
	if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
		b.WriteByte('%')
	}
	b.WriteByte(c)
}

// escapeGlob makes a literal key match only itself as a glob.
func escapeGlob(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if strings.IndexByte(`*?[]\`, s[i]) >= 0 {
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// purgeRecord is how a pattern or key purge is remembered in Redis: the Lua
// pattern that storeScript matches, then the glob for the Cluster path.
func purgeRecord(glob string) string { return globToLuaPattern(glob) + "\n" + glob }

func purgedGlob(record string) string {
	_, glob, _ := strings.Cut(record, "\n")
	return glob
}

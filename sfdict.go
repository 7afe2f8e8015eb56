package rediscache

// A parser for Structured Field Dictionaries (RFC 8941 §4.2.2), the syntax
// of targeted cache-control fields (RFC 9213 §2.1). Only what a cache
// needs is kept: each member's name, the type of its value and, for
// Integers and Booleans, the value itself. Parameters are parsed and
// dropped.

import "strings"

type sfKind int

const (
	sfBoolean sfKind = iota
	sfInteger
	sfDecimal
	sfString
	sfToken
	sfBytes
	sfInnerList
)

type sfMember struct {
	name  string
	kind  sfKind
	value string // Integer: its digits; Boolean: "1" or "0"
}

// sfParser walks a field value; every method leaves pos after what it read.
type sfParser struct {
	s   string
	pos int
}

// parseSFDictionary parses a whole field value; ok is false on any syntax
// error, in which case the whole field must be ignored (RFC 8941 §4.2).
// A repeated name keeps the last value (§4.2.2).
func parseSFDictionary(s string) ([]sfMember, bool) {
	p := &sfParser{s: s}
	p.skipSP()
	var members []sfMember
	for !p.done() {
		name, ok := p.key()
		if !ok {
			return nil, false
		}
		m := sfMember{name: name, kind: sfBoolean, value: "1"}
		if p.peek() == '=' {
			p.pos++
			if m, ok = p.itemOrInnerList(name); !ok {
				return nil, false
			}
		} else if !p.parameters() {
			return nil, false
		}
		members = replaceMember(members, m)
		p.skipOWS()
		if p.done() {
			return members, true
		}
		if p.peek() != ',' {
			return nil, false
		}
		p.pos++
		p.skipOWS()
		if p.done() {
			return nil, false // trailing comma
		}
	}
	return members, true
}

func replaceMember(members []sfMember, m sfMember) []sfMember {
	for i := range members {
		if members[i].name == m.name {
			members[i] = m
			return members
		}
	}
	return append(members, m)
}

func (p *sfParser) done() bool { return p.pos >= len(p.s) }

func (p *sfParser) peek() byte {
	if p.done() {
		return 0
	}
	return p.s[p.pos]
}

func (p *sfParser) skipSP() {
	for p.peek() == ' ' {
		p.pos++
	}
}

func (p *sfParser) skipOWS() {
	for c := p.peek(); c == ' ' || c == '\t'; c = p.peek() {
		p.pos++
	}
}

// key = ( lcalpha / "*" ) *( lcalpha / DIGIT / "_" / "-" / "." / "*" )
func (p *sfParser) key() (string, bool) {
	start := p.pos
	if c := p.peek(); !(c >= 'a' && c <= 'z') && c != '*' {
		return "", false
	}
	for c := p.peek(); (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || strings.IndexByte("_-.*", c) >= 0; c = p.peek() {
		p.pos++
	}
	return p.s[start:p.pos], true
}

func (p *sfParser) itemOrInnerList(name string) (sfMember, bool) {
	if p.peek() == '(' {
		p.pos++
		for {
			p.skipSP()
			if p.peek() == ')' {
				p.pos++
				return sfMember{name: name, kind: sfInnerList}, p.parameters()
			}
			if _, _, ok := p.bareItem(); !ok || !p.parameters() {
				return sfMember{}, false
			}
			if c := p.peek(); c != ' ' && c != ')' {
				return sfMember{}, false
			}
		}
	}
	kind, value, ok := p.bareItem()
	if !ok || !p.parameters() {
		return sfMember{}, false
	}
	return sfMember{name: name, kind: kind, value: value}, true
}

// parameters = *( ";" *SP key [ "=" bare-item ] )
func (p *sfParser) parameters() bool {
	for p.peek() == ';' {
		p.pos++
		p.skipSP()
		if _, ok := p.key(); !ok {
			return false
		}
		if p.peek() == '=' {
			p.pos++
			if _, _, ok := p.bareItem(); !ok {
				return false
			}
		}
	}
	return true
}

func (p *sfParser) bareItem() (sfKind, string, bool) {
	switch c := p.peek(); {
	case c == '-' || (c >= '0' && c <= '9'):
		return p.number()
	case c == '"':
		return sfString, "", p.str()
	case c == '*' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'):
		p.pos++
		for c := p.peek(); c != 0 && (isTchar(c) || c == ':' || c == '/'); c = p.peek() {
			p.pos++
		}
		return sfToken, "", true
	case c == ':':
		end := strings.IndexByte(p.s[p.pos+1:], ':')
		if end < 0 {
			return 0, "", false
		}
		for _, b := range p.s[p.pos+1 : p.pos+1+end] {
			if !(b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' || b == '+' || b == '/' || b == '=') {
				return 0, "", false
			}
		}
		p.pos += end + 2
		return sfBytes, "", true
	case c == '?':
		if p.pos+1 < len(p.s) && (p.s[p.pos+1] == '0' || p.s[p.pos+1] == '1') {
			p.pos += 2
			return sfBoolean, p.s[p.pos-1 : p.pos], true
		}
	}
	return 0, "", false
}

// number reads an Integer (at most 15 digits) or a Decimal (at most 12
// digits, a dot, 1 to 3 digits).
func (p *sfParser) number() (sfKind, string, bool) {
	start := p.pos
	if p.peek() == '-' {
		p.pos++
	}
	intStart := p.pos
	for c := p.peek(); c >= '0' && c <= '9'; c = p.peek() {
		p.pos++
	}
	intDigits := p.pos - intStart
	if intDigits == 0 {
		return 0, "", false
	}
	if p.peek() != '.' {
		return sfInteger, p.s[start:p.pos], intDigits <= 15
	}
	p.pos++
	fracStart := p.pos
	for c := p.peek(); c >= '0' && c <= '9'; c = p.peek() {
		p.pos++
	}
	frac := p.pos - fracStart
	return sfDecimal, "", intDigits <= 12 && frac >= 1 && frac <= 3
}

// str reads a String: printable ASCII, with \" and \\ as the only escapes.
func (p *sfParser) str() bool {
	p.pos++
	for !p.done() {
		c := p.s[p.pos]
		p.pos++
		switch {
		case c == '"':
			return true
		case c == '\\':
			if n := p.peek(); n != '"' && n != '\\' {
				return false
			}
			p.pos++
		case c < 0x20 || c > 0x7e:
			return false
		}
	}
	return false
}

package model

// Hand-written matchers for the names and values banger checks. They replace regular
// expressions because the guest agent links this package: the regexp package, its
// compiler run at package init, and the Unicode tables it pulls in cost ~15 ms of the
// guest's boot under emulation (GODEBUG=inittrace=1 in a microvm guest), before the
// agent's first instruction. Each function says the expression it implements; the tests
// check them against it.

func isLowerAlnum(c byte) bool { return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' }

// IsDNSLabel reports whether s is ^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$: 1-63 lowercase
// letters, digits and inner dashes.
func IsDNSLabel(s string) bool {
	if len(s) == 0 || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isLowerAlnum(s[i]) && (s[i] != '-' || i == 0 || i == len(s)-1) {
			return false
		}
	}
	return true
}

// IsLowerHex reports whether s is exactly n lowercase hex digits (^[0-9a-f]{n}$).
func IsLowerHex(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// IsDigits reports whether s is min to max ASCII digits (^[0-9]{min,max}$).
func IsDigits(s string, min, max int) bool {
	if len(s) < min || len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// isBootStageName is ^[a-z][a-z0-9_]{0,31}$.
func isBootStageName(s string) bool {
	if len(s) == 0 || len(s) > 32 || s[0] < 'a' || s[0] > 'z' {
		return false
	}
	for i := 1; i < len(s); i++ {
		if !isLowerAlnum(s[i]) && s[i] != '_' {
			return false
		}
	}
	return true
}

// isWorkspacePathSpelling is ^(/[A-Za-z0-9._+-]+)+$: absolute, elements of letters,
// digits and ._+- separated by single slashes, no trailing slash.
func isWorkspacePathSpelling(p string) bool {
	if len(p) < 2 || p[0] != '/' || p[len(p)-1] == '/' {
		return false
	}
	for i := 1; i < len(p); i++ {
		c := p[i]
		switch {
		case c == '/':
			if p[i-1] == '/' {
				return false
			}
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9',
			c == '.', c == '_', c == '+', c == '-':
		default:
			return false
		}
	}
	return true
}

// splitSize splits s as ^([0-9]+)(\.[0-9]+)?\s*([a-zA-Z]*)$ into the integer digits, the
// fraction with its dot (or ""), and the unit; ok is false when s does not match. \s is
// RE2's: tab, newline, form feed, carriage return, space.
func splitSize(s string) (whole, frac, unit string, ok bool) {
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	if i == 0 {
		return "", "", "", false
	}
	whole = s[:i]
	if i < len(s) && s[i] == '.' {
		j := i + 1
		for j < len(s) && s[j] >= '0' && s[j] <= '9' {
			j++
		}
		if j == i+1 {
			return "", "", "", false
		}
		frac, i = s[i:j], j
	}
	for i < len(s) && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\f' || s[i] == '\r') {
		i++
	}
	for j := i; j < len(s); j++ {
		if c := s[j]; !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return "", "", "", false
		}
	}
	return whole, frac, s[i:], true
}

package model

import (
	"math/rand"
	"regexp"
	"strings"
	"testing"
)

// spellCorpus is edge cases plus random strings over an alphabet that exercises every
// class the matchers distinguish.
func spellCorpus(extra ...string) []string {
	c := append([]string{"", "a", "-", "a-", "-a", "a-b", "0", "_", "a_", "/", "//", "/a", "/a/", "/a//b", "/a/b",
		"1", "1.", "1.5", ".5", "1.5G", "1 G", "1\tG", "1\vG", "8GiB", "8g ", " 8", "8é", "Ä",
		strings.Repeat("a", 63), strings.Repeat("a", 64), strings.Repeat("f", 32), strings.Repeat("0", 64)}, extra...)
	const alphabet = "az09AZ-_./+ \t\n\f\r\vgbkGBK€"
	r := rand.New(rand.NewSource(13))
	for i := 0; i < 20000; i++ {
		var b strings.Builder
		for n := r.Intn(70); n > 0; n-- {
			b.WriteByte(alphabet[r.Intn(len(alphabet))])
		}
		c = append(c, b.String())
	}
	return c
}

// Each matcher agrees with the regular expression it replaced.
func TestSpellMatchersAgreeWithTheirExpressions(t *testing.T) {
	cases := []struct {
		re    string
		match func(string) bool
	}{
		{`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`, IsDNSLabel},
		{`^[a-z][a-z0-9_]{0,31}$`, isBootStageName},
		{`^(/[A-Za-z0-9._+-]+)+$`, isWorkspacePathSpelling},
		{`^[0-9a-f]{32}$`, func(s string) bool { return IsLowerHex(s, 32) }},
		{`^[0-9a-f]{64}$`, func(s string) bool { return IsLowerHex(s, 64) }},
		{`^[0-9]{1,2}$`, func(s string) bool { return IsDigits(s, 1, 2) }},
	}
	corpus := spellCorpus()
	for _, c := range cases {
		re := regexp.MustCompile(c.re)
		matched := 0
		for _, s := range corpus {
			want := re.MatchString(s)
			if got := c.match(s); got != want {
				t.Errorf("%s on %q: %v, the expression says %v", c.re, s, got, want)
			}
			if want {
				matched++
			}
		}
		if matched == 0 {
			t.Errorf("%s matched nothing in the corpus: the comparison proves nothing", c.re)
		}
	}
}

// splitSize yields the expression's submatches.
func TestSplitSizeAgreesWithItsExpression(t *testing.T) {
	re := regexp.MustCompile(`^([0-9]+)(\.[0-9]+)?\s*([a-zA-Z]*)$`)
	matched := 0
	for _, s := range spellCorpus("12", "12.25 MiB", "3\n\fk", "7.x", "7..5") {
		m := re.FindStringSubmatch(s)
		whole, frac, unit, ok := splitSize(s)
		if ok != (m != nil) || ok && (whole != m[1] || frac != m[2] || unit != m[3]) {
			t.Errorf("splitSize(%q) = %q %q %q %v, the expression says %q", s, whole, frac, unit, ok, m)
		}
		if ok {
			matched++
		}
	}
	if matched == 0 {
		t.Error("no size in the corpus")
	}
}

package opid

import (
	"math/rand"
	"regexp"
	"strings"
	"testing"
)

// Valid agrees with the expression it replaced, and accepts what New makes.
func TestValidAgreesWithItsExpression(t *testing.T) {
	re := regexp.MustCompile(`^op-[a-z0-9]{8,64}$`)
	corpus := []string{"", "op-", "op-1234567", "op-12345678", "op-" + strings.Repeat("a", 64), "op-" + strings.Repeat("a", 65),
		"OP-12345678", "op-1234567A", "xop-12345678", "op-12345678\n"}
	r := rand.New(rand.NewSource(13))
	const alphabet = "op-az09A_\n"
	for i := 0; i < 20000; i++ {
		var b strings.Builder
		b.WriteString("op-")
		for n := r.Intn(70); n > 0; n-- {
			b.WriteByte(alphabet[r.Intn(len(alphabet))])
		}
		corpus = append(corpus, b.String(), b.String()[1:])
	}
	for _, s := range corpus {
		if got, want := Valid(s), re.MatchString(s); got != want {
			t.Errorf("Valid(%q) = %v, the expression says %v", s, got, want)
		}
	}
	for i := 0; i < 100; i++ {
		if id := New(); !Valid(id) {
			t.Fatalf("New made %q, which Valid refuses", id)
		}
	}
}

package ctl

import (
	"bytes"
	"strings"
	"testing"

	"banger/internal/api"
)

// A stage without a total that moves (the microvm kernel's compile) prints a line per step
// and not one per update.
func TestProgressCountsPrintStepsNotEveryUpdate(t *testing.T) {
	var errOut bytes.Buffer
	g := &Globals{Stderr: &errOut, Stdout: &bytes.Buffer{}}
	p := progressPrinter(g, false)
	p(api.Stage{Name: "build_image", Message: "build tiny-microvm"}, false)
	p(api.Stage{Name: "build_image", Message: "build tiny-microvm: kernel extract"}, true)
	p(api.Stage{Name: "build_image", Message: "build tiny-microvm: kernel configure"}, true)
	for _, n := range []string{"50", "100", "150"} {
		p(api.Stage{Name: "build_image", Message: "build tiny-microvm: kernel compile: " + n + " lines", Done: 1}, true)
	}
	p(api.Stage{Name: "build_image", Message: "build tiny-microvm: kernel done"}, true)
	out := errOut.String()
	for _, want := range []string{"kernel extract", "kernel configure", "kernel compile: 50 lines", "kernel done"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "100 lines") || strings.Contains(out, "150 lines") {
		t.Errorf("every compile update printed:\n%s", out)
	}
}

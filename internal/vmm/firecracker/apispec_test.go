package firecracker

import (
	"banger/internal/testkit"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi2"
	"github.com/getkin/kin-openapi/openapi2conv"
	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
)

// The contract tests check every request against Firecracker's published Swagger 2.0 spec
// with kin-openapi: the spec is converted to OpenAPI 3, every object schema that leaves
// additionalProperties unspecified is closed so that a misspelt field fails (Firecracker's
// serde structs deny unknown fields), and each request is routed and validated by
// openapi3filter.

type apiSpec struct {
	router routers.Router
}

// findAPISpec returns Firecracker's API description: $BANGER_FIRECRACKER_SPEC, or
// shared/firecracker/firecracker.yaml in a directory above the package (CI lays shared/
// beside the clone). A user's clone has neither: outside CI the contract tests then skip and
// say where the file comes from; under CI=true that is a failure.
func findAPISpec(t testing.TB) string {
	t.Helper()
	if p := os.Getenv(specEnv); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s=%s: %v", specEnv, p, err)
		}
		return p
	}
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		p := filepath.Join(dir, "shared", "firecracker", "firecracker.yaml")
		if _, err := os.Stat(p); err == nil {
			return p
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			break
		}
		dir = parent
	}
	testkit.Missing(t, "Firecracker's API spec was not found: set %s to a firecracker.yaml, or place shared/firecracker/firecracker.yaml "+
		"in a directory above the checkout. The file is src/firecracker/swagger/firecracker.yaml of a Firecracker release "+
		"(the contract tests were written against API 1.17)", specEnv)
	return ""
}

// specEnv names an explicit firecracker.yaml for the contract tests.
const specEnv = "BANGER_FIRECRACKER_SPEC"

func loadAPISpec(path string) (*apiSpec, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var doc2 openapi2.T
	if err := openapi2.UnmarshalFromData(b, &doc2); err != nil {
		return nil, fmt.Errorf("parsing %s: %w", path, err)
	}
	if len(doc2.Paths) == 0 || len(doc2.Definitions) == 0 {
		return nil, fmt.Errorf("%s has no paths or definitions", path)
	}
	// The API is served on a unix socket, so the spec's host means nothing; without it the
	// converted server URL is just the base path and the router matches any Host header.
	doc2.Host = ""
	doc, err := openapi2conv.ToV3(&doc2)
	if err != nil {
		return nil, fmt.Errorf("converting %s to OpenAPI 3: %w", path, err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	closeObjectSchemas(doc)
	router, err := gorillamux.NewRouter(doc)
	if err != nil {
		return nil, fmt.Errorf("routing %s: %w", path, err)
	}
	return &apiSpec{router: router}, nil
}

// closeObjectSchemas sets additionalProperties: false on every object schema that does not
// say otherwise. JSON Schema leaves such objects open, which would let a misspelt optional
// field through; Firecracker rejects it.
func closeObjectSchemas(doc *openapi3.T) {
	seen := map[*openapi3.Schema]bool{}
	var walk func(ref *openapi3.SchemaRef)
	walk = func(ref *openapi3.SchemaRef) {
		if ref == nil || ref.Value == nil || seen[ref.Value] {
			return
		}
		s := ref.Value
		seen[s] = true
		object := s.Type.Is(openapi3.TypeObject) || (s.Type.IsEmpty() && len(s.Properties) > 0)
		if object && s.AdditionalProperties.Has == nil && s.AdditionalProperties.Schema == nil {
			closed := false
			s.AdditionalProperties.Has = &closed
		}
		for _, p := range s.Properties {
			walk(p)
		}
		walk(s.Items)
		walk(s.AdditionalProperties.Schema)
		walk(s.Not)
		for _, group := range []openapi3.SchemaRefs{s.AllOf, s.AnyOf, s.OneOf} {
			for _, sub := range group {
				walk(sub)
			}
		}
	}
	for _, s := range doc.Components.Schemas {
		walk(s)
	}
	for _, item := range doc.Paths.Map() {
		for _, op := range item.Operations() {
			for _, p := range op.Parameters {
				walk(p.Value.Schema)
			}
			if op.RequestBody != nil {
				for _, mt := range op.RequestBody.Value.Content {
					walk(mt.Schema)
				}
			}
		}
	}
}

// validateRequest checks r (whose body has already been read into body) against the spec:
// path, method, path parameters, content type and JSON body. It returns the path
// parameters.
func (s *apiSpec) validateRequest(r *http.Request, body []byte) (map[string]string, error) {
	req := r.Clone(r.Context())
	req.Body = http.NoBody
	if len(body) > 0 {
		req.Body = io.NopCloser(bytes.NewReader(body))
	}
	req.ContentLength = int64(len(body))
	route, params, err := s.router.FindRoute(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", r.Method, r.URL.Path, err)
	}
	// Hand-written: kin-openapi's JSON body decoder reads the first JSON value and ignores
	// whatever follows it, where Firecracker (serde_json::from_slice) refuses trailing data.
	if len(bytes.TrimSpace(body)) > 0 && !json.Valid(body) {
		return nil, fmt.Errorf("%s %s: body is not a single JSON value", r.Method, r.URL.Path)
	}
	err = openapi3filter.ValidateRequest(r.Context(), &openapi3filter.RequestValidationInput{
		Request:    req,
		PathParams: params,
		Route:      route,
		Options: &openapi3filter.Options{
			RejectWhenRequestBodyNotSpecified: true,
			SkipSettingDefaults:               true,
			MultiError:                        true,
			// One line per fault: the fake sends it back as Firecracker's fault_message.
			SchemaValidationOptions: []openapi3.SchemaValidationOption{openapi3.DisableSchemaErrorDetails()},
		},
	})
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", r.Method, r.URL.Path, err)
	}
	// The router matches the escaped path.
	for k, v := range params {
		if params[k], err = url.PathUnescape(v); err != nil {
			return nil, fmt.Errorf("%s %s: path parameter %s: %w", r.Method, r.URL.Path, k, err)
		}
	}
	return params, nil
}

// newAPIRequest is a request as the driver's client sends it.
func newAPIRequest(method, path, body string) *http.Request {
	r := httptest.NewRequest(method, "http://localhost"+path, strings.NewReader(body))
	r.Header.Set("Accept", "application/json")
	if body != "" {
		r.Header.Set("Content-Type", "application/json")
	}
	return r
}

func TestValidatorAgainstSpec(t *testing.T) {
	spec, err := loadAPISpec(findAPISpec(t))
	if err != nil {
		t.Fatal(err)
	}
	good := []struct{ method, path, body string }{
		{"PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":512}`},
		{"PUT", "/drives/rootfs", `{"drive_id":"rootfs","path_on_host":"/a","is_root_device":true,"is_read_only":true}`},
		{"PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`},
		{"PUT", "/metrics", `{"metrics_path":"/m","properties":{"k":"v"}}`},
		{"GET", "/", ``},
	}
	for _, g := range good {
		params, err := spec.validateRequest(newAPIRequest(g.method, g.path, g.body), []byte(g.body))
		if err != nil {
			t.Errorf("valid %s %s rejected: %v", g.method, g.path, err)
		}
		if g.path == "/drives/rootfs" && params["drive_id"] != "rootfs" {
			t.Errorf("%s %s: path parameters %v, want drive_id=rootfs", g.method, g.path, params)
		}
	}
	bad := []struct{ method, path, body, want string }{
		{"PUT", "/machine-config", `{"vcpu_cout":2,"vcpu_count":2,"mem_size_mib":512}`, `property "vcpu_cout" is unsupported`},
		{"PUT", "/machine-config", `{"vcpu_count":2}`, `property "mem_size_mib" is missing`},
		{"PUT", "/machine-config", `{"vcpu_count":"2","mem_size_mib":512}`, `"/vcpu_count": value must be an integer`},
		{"PUT", "/machine-config", `{"vcpu_count":33,"mem_size_mib":512}`, "number must be at most 32"},
		{"PUT", "/machine-config", `{"vcpu_count":1.5,"mem_size_mib":512}`, `"/vcpu_count": value must be an integer`},
		{"PUT", "/actions", `{"action_type":"Reboot"}`, "value is not one of the allowed values"},
		{"PUT", "/actions", ``, "value is required but missing"},
		{"PUT", "/vsock", `{"guest_cid":2,"uds_path":"/v"}`, "number must be at least 3"},
		{"PUT", "/drives/rootfs", `{"drive_id":"rootfs","is_root_device":"yes"}`, "value must be a boolean"},
		{"PUT", "/metrics", `{"metrics_path":"/m","properties":{"k":1}}`, `"/properties/k": value must be a string`},
		{"DELETE", "/vsock", ``, "method not allowed"},
		{"PUT", "/reboot", `{}`, "no matching operation was found"},
		{"GET", "/", `{}`, "request body not allowed"},
		{"PUT", "/logger", `{"log_path":"/l"} {}`, "body is not a single JSON value"},
	}
	for _, b := range bad {
		_, err := spec.validateRequest(newAPIRequest(b.method, b.path, b.body), []byte(b.body))
		if err == nil || !strings.Contains(err.Error(), b.want) {
			t.Errorf("%s %s %s: got %v, want an error containing %q", b.method, b.path, b.body, err, b.want)
		}
	}
	body := `{"vcpu_count":2,"mem_size_mib":512}`
	r := newAPIRequest("PUT", "/machine-config", body)
	r.Header.Set("Content-Type", "text/plain")
	if _, err := spec.validateRequest(r, []byte(body)); err == nil || !strings.Contains(err.Error(), "Content-Type") {
		t.Errorf("JSON body sent as text/plain: got %v, want a Content-Type error", err)
	}
}

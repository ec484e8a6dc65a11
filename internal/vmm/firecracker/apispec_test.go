package firecracker

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// The contract tests check every request against Firecracker's published Swagger 2.0 spec
// with this validator. It covers what firecracker.yaml uses: $ref, object/string/integer/
// number/boolean/array, required, enum, minimum/maximum and additionalProperties, and it
// treats objects without additionalProperties as closed so that a misspelt field fails.

type apiSpec struct {
	Paths       map[string]map[string]apiOperation `yaml:"paths"`
	Definitions map[string]*apiSchema              `yaml:"definitions"`
}

type apiOperation struct {
	Parameters []apiParameter `yaml:"parameters"`
}

type apiParameter struct {
	Name     string     `yaml:"name"`
	In       string     `yaml:"in"`
	Required bool       `yaml:"required"`
	Type     string     `yaml:"type"`
	Schema   *apiSchema `yaml:"schema"`
}

type apiSchema struct {
	Ref                  string                `yaml:"$ref"`
	Type                 string                `yaml:"type"`
	Required             []string              `yaml:"required"`
	Properties           map[string]*apiSchema `yaml:"properties"`
	AdditionalProperties yaml.Node             `yaml:"additionalProperties"`
	Enum                 []any                 `yaml:"enum"`
	Minimum              *float64              `yaml:"minimum"`
	Maximum              *float64              `yaml:"maximum"`
	Items                *apiSchema            `yaml:"items"`
	ReadOnly             bool                  `yaml:"readOnly"`
}

// findAPISpec looks for shared/firecracker/firecracker.yaml beside the repository (or any
// directory above the package): CI clones the repository next to a copy of shared/.
func findAPISpec(t testing.TB) string {
	t.Helper()
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
	msg := "shared/firecracker/firecracker.yaml not found in any directory above the package"
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

func loadAPISpec(path string) (*apiSpec, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var s apiSpec
	if err := yaml.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("parsing %s: %w", path, err)
	}
	if len(s.Paths) == 0 || len(s.Definitions) == 0 {
		return nil, fmt.Errorf("%s has no paths or definitions", path)
	}
	return &s, nil
}

// matchPath finds the path template for urlPath and the values of its parameters.
func (s *apiSpec) matchPath(urlPath string) (string, map[string]string, bool) {
	got := strings.Split(strings.Trim(urlPath, "/"), "/")
	templates := make([]string, 0, len(s.Paths))
	for t := range s.Paths {
		templates = append(templates, t)
	}
	sort.Strings(templates) // literal segments sort before "{": prefer them
	for _, t := range templates {
		want := strings.Split(strings.Trim(t, "/"), "/")
		if len(want) != len(got) {
			continue
		}
		params := map[string]string{}
		ok := true
		for i, w := range want {
			if strings.HasPrefix(w, "{") && strings.HasSuffix(w, "}") {
				params[w[1:len(w)-1]] = got[i]
			} else if w != got[i] {
				ok = false
				break
			}
		}
		if ok {
			return t, params, true
		}
	}
	return "", nil, false
}

// validateRequest checks method, path and JSON body against the spec. It returns the path
// parameters.
func (s *apiSpec) validateRequest(method, urlPath string, body []byte) (map[string]string, error) {
	tmpl, params, ok := s.matchPath(urlPath)
	if !ok {
		return nil, fmt.Errorf("%s %s: no such path in the API", method, urlPath)
	}
	op, ok := s.Paths[tmpl][strings.ToLower(method)]
	if !ok {
		return nil, fmt.Errorf("%s %s: method not allowed", method, urlPath)
	}
	var bodyParam *apiParameter
	for i, p := range op.Parameters {
		switch p.In {
		case "path":
			if params[p.Name] == "" {
				return nil, fmt.Errorf("%s %s: empty path parameter %s", method, urlPath, p.Name)
			}
		case "body":
			bodyParam = &op.Parameters[i]
		}
	}
	body = bytes.TrimSpace(body)
	switch {
	case bodyParam == nil && len(body) > 0:
		return nil, fmt.Errorf("%s %s: takes no body", method, urlPath)
	case bodyParam == nil:
		return params, nil
	case len(body) == 0 && bodyParam.Required:
		return nil, fmt.Errorf("%s %s: body required", method, urlPath)
	case len(body) == 0:
		return params, nil
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("%s %s: body is not JSON: %w", method, urlPath, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s %s: trailing data after the JSON body", method, urlPath)
	}
	if err := s.validate(v, bodyParam.Schema, "body"); err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, urlPath, err)
	}
	return params, nil
}

func (s *apiSpec) resolve(sc *apiSchema) (*apiSchema, error) {
	for sc != nil && sc.Ref != "" {
		name, ok := strings.CutPrefix(sc.Ref, "#/definitions/")
		if !ok || s.Definitions[name] == nil {
			return nil, fmt.Errorf("unresolvable $ref %q", sc.Ref)
		}
		sc = s.Definitions[name]
	}
	return sc, nil
}

func (s *apiSpec) validate(v any, sc *apiSchema, at string) error {
	sc, err := s.resolve(sc)
	if err != nil || sc == nil {
		return err
	}
	if len(sc.Enum) > 0 {
		ok := slices.ContainsFunc(sc.Enum, func(e any) bool { return fmt.Sprint(e) == fmt.Sprint(v) })
		if !ok {
			return fmt.Errorf("%s: %v is not one of %v", at, v, sc.Enum)
		}
	}
	typ := sc.Type
	if typ == "" && sc.Properties != nil {
		typ = "object"
	}
	switch typ {
	case "object":
		m, ok := v.(map[string]any)
		if !ok {
			return fmt.Errorf("%s: want an object, got %T", at, v)
		}
		for _, r := range sc.Required {
			if _, ok := m[r]; !ok {
				return fmt.Errorf("%s: required field %q missing", at, r)
			}
		}
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if p, ok := sc.Properties[k]; ok {
				if p.ReadOnly {
					return fmt.Errorf("%s.%s: read-only field in a request", at, k)
				}
				if err := s.validate(m[k], p, at+"."+k); err != nil {
					return err
				}
				continue
			}
			switch ap := sc.AdditionalProperties; {
			case ap.Kind == yaml.ScalarNode && ap.Value == "true":
			case ap.Kind == yaml.MappingNode:
				var extra apiSchema
				if err := ap.Decode(&extra); err != nil {
					return err
				}
				if err := s.validate(m[k], &extra, at+"."+k); err != nil {
					return err
				}
			default:
				return fmt.Errorf("%s: unknown field %q", at, k)
			}
		}
	case "string":
		if _, ok := v.(string); !ok {
			return fmt.Errorf("%s: want a string, got %T", at, v)
		}
	case "boolean":
		if _, ok := v.(bool); !ok {
			return fmt.Errorf("%s: want a boolean, got %T", at, v)
		}
	case "integer", "number":
		n, ok := v.(json.Number)
		if !ok {
			return fmt.Errorf("%s: want a number, got %T", at, v)
		}
		f, err := n.Float64()
		if err != nil {
			return fmt.Errorf("%s: %w", at, err)
		}
		if _, err := n.Int64(); typ == "integer" && err != nil {
			return fmt.Errorf("%s: want an integer, got %s", at, n)
		}
		if sc.Minimum != nil && f < *sc.Minimum {
			return fmt.Errorf("%s: %s is below the minimum %v", at, n, *sc.Minimum)
		}
		if sc.Maximum != nil && f > *sc.Maximum {
			return fmt.Errorf("%s: %s is above the maximum %v", at, n, *sc.Maximum)
		}
	case "array":
		a, ok := v.([]any)
		if !ok {
			return fmt.Errorf("%s: want an array, got %T", at, v)
		}
		for i, e := range a {
			if err := s.validate(e, sc.Items, fmt.Sprintf("%s[%d]", at, i)); err != nil {
				return err
			}
		}
	}
	return nil
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
		if _, err := spec.validateRequest(g.method, g.path, []byte(g.body)); err != nil {
			t.Errorf("valid %s %s rejected: %v", g.method, g.path, err)
		}
	}
	bad := []struct{ method, path, body, want string }{
		{"PUT", "/machine-config", `{"vcpu_cout":2,"vcpu_count":2,"mem_size_mib":512}`, `unknown field "vcpu_cout"`},
		{"PUT", "/machine-config", `{"vcpu_count":2}`, `required field "mem_size_mib" missing`},
		{"PUT", "/machine-config", `{"vcpu_count":"2","mem_size_mib":512}`, "want a number"},
		{"PUT", "/machine-config", `{"vcpu_count":33,"mem_size_mib":512}`, "above the maximum"},
		{"PUT", "/machine-config", `{"vcpu_count":1.5,"mem_size_mib":512}`, "want an integer"},
		{"PUT", "/actions", `{"action_type":"Reboot"}`, "is not one of"},
		{"PUT", "/actions", ``, "body required"},
		{"PUT", "/vsock", `{"guest_cid":2,"uds_path":"/v"}`, "below the minimum"},
		{"PUT", "/drives/rootfs", `{"drive_id":"rootfs","is_root_device":"yes"}`, "want a boolean"},
		{"PUT", "/metrics", `{"metrics_path":"/m","properties":{"k":1}}`, "want a string"},
		{"DELETE", "/vsock", ``, "method not allowed"},
		{"PUT", "/reboot", `{}`, "no such path"},
		{"GET", "/", `{}`, "takes no body"},
		{"PUT", "/logger", `{"log_path":"/l"} {}`, "trailing data"},
	}
	for _, b := range bad {
		_, err := spec.validateRequest(b.method, b.path, []byte(b.body))
		if err == nil || !strings.Contains(err.Error(), b.want) {
			t.Errorf("%s %s %s: got %v, want an error containing %q", b.method, b.path, b.body, err, b.want)
		}
	}
}

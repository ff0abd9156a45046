package main

import (
	"maps"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// openAPIFile is the API description, relative to this package.
const openAPIFile = "../../docs/openapi.yaml"

// httpMethods are the operation keys of an OpenAPI path item.
var httpMethods = []string{"get", "put", "post", "delete", "options", "head", "patch", "trace"}

// operation is one documented method of a path, with its response codes.
type operation struct {
	method, path string
	codes        []string
}

func (o operation) pattern() string { return strings.ToUpper(o.method) + " " + o.path }

// loadOpenAPI reads the API description and returns its operations.
func loadOpenAPI(t *testing.T) []operation {
	t.Helper()
	raw, err := os.ReadFile(openAPIFile)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		OpenAPI string                    `yaml:"openapi"`
		Paths   map[string]map[string]any `yaml:"paths"`
	}
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		t.Fatalf("parse %s: %v", openAPIFile, err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.1.") {
		t.Errorf("openapi version %q, want 3.1.x", doc.OpenAPI)
	}
	var ops []operation
	for path, item := range doc.Paths {
		for _, m := range httpMethods {
			op, ok := item[m].(map[string]any)
			if !ok {
				continue
			}
			responses, _ := op["responses"].(map[string]any)
			if len(responses) == 0 {
				t.Errorf("%s %s documents no responses", m, path)
			}
			ops = append(ops, operation{method: m, path: path, codes: slices.Sorted(maps.Keys(responses))})
		}
	}
	slices.SortFunc(ops, func(a, b operation) int { return strings.Compare(a.pattern(), b.pattern()) })
	return ops
}

// v1Patterns returns the token-protected routes the API registers.
func v1Patterns() []string {
	a := &api{}
	a.routes(http.NewServeMux())
	return a.patterns
}

// TestOpenAPIDocumentsEveryRoute checks that the description and the
// routes name the same operations.
func TestOpenAPIDocumentsEveryRoute(t *testing.T) {
	documented := map[string]bool{}
	for _, op := range loadOpenAPI(t) {
		documented[op.pattern()] = true
	}
	served := map[string]bool{}
	for _, p := range v1Patterns() {
		served[p] = true
		if !documented[p] {
			t.Errorf("route %s is served but not in %s", p, openAPIFile)
		}
	}
	for p := range documented {
		if !served[p] {
			t.Errorf("%s documents %s, which the API does not register", openAPIFile, p)
		}
	}
}

// TestOpenAPIMatchesServer calls every documented operation on a real
// process: none may hit the mux's own 404 or 405, and each status must be
// one the description lists for that operation.
func TestOpenAPIMatchesServer(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a process")
	}
	t.Setenv(apiTokenEnv, testAPIToken)
	svc := startService(t, t.TempDir())
	c := dialRecording(t, svc, "dora")

	for _, op := range loadOpenAPI(t) {
		t.Run(op.pattern(), func(t *testing.T) {
			path := strings.ReplaceAll(op.path, "{id}", c.id)
			if strings.HasPrefix(op.path, "/v1/users/") {
				path = strings.ReplaceAll(op.path, "{id}", "dora")
			}
			var body []byte
			hdr := map[string]string{}
			if op.method == "post" && strings.HasSuffix(op.path, "/messages") {
				body, hdr["Content-Type"] = []byte("ping"), "text/plain"
			}

			for _, tok := range []string{testAPIToken, "", "wrong-" + testAPIToken} {
				r := call(t, strings.ToUpper(op.method), svc.base+path, tok, body, hdr)
				if r.status == http.StatusMethodNotAllowed ||
					(r.status == http.StatusNotFound && strings.HasPrefix(r.header.Get("Content-Type"), "text/plain")) {
					t.Fatalf("the mux does not route it: %d %s", r.status, r.body)
				}
				if !slices.Contains(op.codes, strconv.Itoa(r.status)) {
					t.Errorf("status %d (token %q) is not among the documented %v: %.200s", r.status, tok, op.codes, r.body)
				}
			}
		})
	}
}

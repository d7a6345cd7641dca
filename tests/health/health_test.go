// Package health tests charts/dbgrant/files/argocd-health.lua the way Argo CD runs a
// resource health script: gopher-lua with the same libraries opened, the
// object decoded into Lua tables as Argo CD's util/lua does, and `hs`
// (status, message) read back.
//
// Every condition reason in src/api/conditions.rs must have a row in
// `expected`, and every (shape, reason) pair the operator's code builds
// (Outcome::ready/progressing/stalled/not_ready(reason::X, …)) must be a
// row: a new reason, or an old one set in a new way, fails here until its
// Argo CD health is decided.
package health

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	lua "github.com/yuin/gopher-lua"
)

const repo = "../.."

var kinds = []string{"MongoTarget", "MongoRoleBinding", "CosmosTarget", "CosmosRoleDefinition", "CosmosRoleBinding"}

// expected: reason -> shape -> Argo CD health. Shapes are the Outcome
// constructors: ready (Ready=True), progressing (Ready=False,
// Reconciling=True), stalled (Ready=False, Stalled=True), not_ready
// (Ready=False only). An empty map is a reason used only for Events.
var expected = map[string]map[string]string{
	"Applied":                {"ready": "Healthy"},
	"Connected":              {"ready": "Healthy"},
	"Progressing":            {"progressing": "Progressing"},
	"TargetNotFound":         {"stalled": "Degraded"},
	"TargetNotReady":         {"progressing": "Progressing", "stalled": "Degraded"},
	"GrantDenied":            {"stalled": "Degraded"},
	"Expired":                {"not_ready": "Degraded", "stalled": "Degraded"},
	"InvalidSpec":            {"stalled": "Degraded"},
	"Conflict":               {"stalled": "Degraded"},
	"Rejected":               {"stalled": "Degraded"},
	"Unreachable":            {"progressing": "Progressing"},
	"Unauthorized":           {"stalled": "Degraded"},
	"SecretNotFound":         {"stalled": "Degraded"},
	"Throttled":              {"progressing": "Progressing"},
	"PrincipalNotFound":      {"progressing": "Progressing"},
	"BackendError":           {"progressing": "Progressing"},
	"Revoking":               {"progressing": "Progressing"},
	"RevocationPending":      {"progressing": "Progressing"},
	"DriftCorrected":         {},
	"AccessChanged":          {},
	"Observing":              {"ready": "Suspended", "not_ready": "Suspended"},
	"CredentialUnavailable":  {"stalled": "Degraded"},
	"AccountNotFound":        {"stalled": "Degraded"},
	"RoleDefinitionNotFound": {"stalled": "Degraded"},
	"RoleDefinitionNotReady": {"progressing": "Progressing"},
	"InUse":                  {"stalled": "Degraded"},
	"LimitExceeded":          {"stalled": "Degraded"},
	"Terminating":            {"progressing": "Progressing", "stalled": "Degraded"},
}

// reasons reads `pub const NAME: &str = "Value";` inside `pub mod reason`.
func reasons(t *testing.T) map[string]string {
	src, err := os.ReadFile(filepath.Join(repo, "src/api/conditions.rs"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(src)
	start := strings.Index(text, "pub mod reason {")
	if start < 0 {
		t.Fatal("no `pub mod reason` in conditions.rs")
	}
	end := start + strings.Index(text[start:], "\n}")
	out := map[string]string{}
	for _, m := range regexp.MustCompile(`pub const ([A-Z_]+): &str = "([A-Za-z]+)";`).FindAllStringSubmatch(text[start:end], -1) {
		out[m[1]] = m[2]
	}
	if len(out) < 20 {
		t.Fatalf("found only %d reasons", len(out))
	}
	return out
}

// uses finds every (shape, REASON_CONST) the operator's code builds.
func uses(t *testing.T) map[[2]string]bool {
	out := map[[2]string]bool{}
	re := regexp.MustCompile(`\b(ready|progressing|stalled|not_ready)\(\s*reason::([A-Z_]+)`)
	err := filepath.Walk(filepath.Join(repo, "src"), func(path string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() || !strings.HasSuffix(path, ".rs") {
			return err
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		text := string(src)
		// Unit tests build outcomes too; only the operator's code counts.
		if i := strings.Index(text, "#[cfg(test)]"); i >= 0 {
			text = text[:i]
		}
		for _, m := range re.FindAllStringSubmatch(text, -1) {
			out[[2]string{m[1], m[2]}] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func condition(typ, status, reason string) map[string]any {
	return map[string]any{
		"type": typ, "status": status, "reason": reason, "message": "what dbgrant said",
		"observedGeneration": 3, "lastTransitionTime": "2030-01-01T00:00:00Z",
	}
}

func fixture(kind, shape, reason string) map[string]any {
	conds := []any{}
	switch shape {
	case "ready":
		conds = append(conds, condition("Ready", "True", reason))
	case "progressing":
		conds = append(conds, condition("Ready", "False", reason), condition("Reconciling", "True", reason))
	case "stalled":
		conds = append(conds, condition("Ready", "False", reason), condition("Stalled", "True", reason))
	case "not_ready":
		conds = append(conds, condition("Ready", "False", reason))
	}
	return map[string]any{
		"apiVersion": "dbgrant.io/v1alpha1", "kind": kind,
		"metadata": map[string]any{"name": "x", "generation": 3},
		"status":   map[string]any{"conditions": conds, "observedGeneration": 3},
	}
}

// decode turns JSON-shaped Go values into Lua values as Argo CD's
// util/lua decodeValue does: objects and arrays to tables, numbers to
// LNumber.
func decode(l *lua.LState, v any) lua.LValue {
	switch v := v.(type) {
	case map[string]any:
		t := l.NewTable()
		for k, x := range v {
			t.RawSetString(k, decode(l, x))
		}
		return t
	case []any:
		t := l.NewTable()
		for _, x := range v {
			t.Append(decode(l, x))
		}
		return t
	case string:
		return lua.LString(v)
	case bool:
		return lua.LBool(v)
	case float64:
		return lua.LNumber(v)
	case int:
		return lua.LNumber(v)
	case nil:
		return lua.LNil
	}
	panic("unexpected value")
}

// health runs the script on obj (round-tripped through JSON, as an
// unstructured object is) and returns (status, message).
func health(t *testing.T, obj map[string]any) (string, string) {
	script, err := os.ReadFile(filepath.Join(repo, "charts/dbgrant/files/argocd-health.lua"))
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(obj)
	var generic map[string]any
	if err := json.Unmarshal(raw, &generic); err != nil {
		t.Fatal(err)
	}
	l := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer l.Close()
	for _, lib := range []struct {
		name string
		fn   lua.LGFunction
	}{{lua.LoadLibName, lua.OpenPackage}, {lua.BaseLibName, lua.OpenBase}, {lua.TabLibName, lua.OpenTable}, {lua.StringLibName, lua.OpenString}, {lua.MathLibName, lua.OpenMath}, {lua.CoroutineLibName, lua.OpenCoroutine}} {
		if err := l.CallByParam(lua.P{Fn: l.NewFunction(lib.fn), NRet: 0, Protect: true}, lua.LString(lib.name)); err != nil {
			t.Fatal(err)
		}
	}
	l.SetGlobal("obj", decode(l, generic))
	if err := l.DoString(string(script)); err != nil {
		t.Fatalf("script failed: %v", err)
	}
	hs, ok := l.Get(-1).(*lua.LTable)
	if !ok {
		t.Fatalf("script returned %v, not a table", l.Get(-1))
	}
	return lua.LVAsString(hs.RawGetString("status")), lua.LVAsString(hs.RawGetString("message"))
}

func TestEveryReasonHasAHealth(t *testing.T) {
	byConst := reasons(t)
	for name, value := range byConst {
		if _, ok := expected[value]; !ok {
			t.Errorf("reason %s (%q) has no row in expected: decide its Argo CD health", name, value)
		}
	}
	found := uses(t)
	if len(found) < 20 {
		t.Fatalf("found only %d outcome constructors in src/", len(found))
	}
	for use := range found {
		value, ok := byConst[use[1]]
		if !ok {
			t.Errorf("the code uses reason::%s, which conditions.rs does not define", use[1])
			continue
		}
		if _, ok := expected[value][use[0]]; !ok {
			t.Errorf("the operator sets %s as %s, which expected does not cover", value, use[0])
		}
	}
}

func TestHealthOfEveryReasonOnEveryKind(t *testing.T) {
	var names []string
	for r := range expected {
		names = append(names, r)
	}
	sort.Strings(names)
	for _, kind := range kinds {
		for _, reason := range names {
			for shape, want := range expected[reason] {
				status, message := health(t, fixture(kind, shape, reason))
				if status != want {
					t.Errorf("%s %s as %s: got %s, want %s", kind, reason, shape, status, want)
				}
				if !strings.HasPrefix(message, reason+": ") {
					t.Errorf("%s %s as %s: message %q does not say the reason", kind, reason, shape, message)
				}
			}
		}
	}
}

func TestNotYetReconciledOrDeletingIsProgressing(t *testing.T) {
	for _, kind := range kinds {
		none := map[string]any{"kind": kind, "metadata": map[string]any{"name": "x", "generation": 1}}
		if s, _ := health(t, none); s != "Progressing" {
			t.Errorf("%s without status: %s", kind, s)
		}
		old := fixture(kind, "ready", "Applied")
		old["metadata"].(map[string]any)["generation"] = 4
		if s, m := health(t, old); s != "Progressing" || !strings.Contains(m, "generation 4") {
			t.Errorf("%s Ready for an older generation: %s %q", kind, s, m)
		}
		deleting := fixture(kind, "ready", "Applied")
		deleting["metadata"].(map[string]any)["deletionTimestamp"] = "2030-01-01T00:00:00Z"
		if s, _ := health(t, deleting); s != "Progressing" {
			t.Errorf("%s being deleted: %s", kind, s)
		}
	}
}

// README's argocd-cm snippet is the shipped script, verbatim.
func TestReadmeSnippetIsTheScript(t *testing.T) {
	script, err := os.ReadFile(filepath.Join(repo, "charts/dbgrant/files/argocd-health.lua"))
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(filepath.Join(repo, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	const key = "  resource.customizations.health.dbgrant.io_MongoTarget: &dbgrant-health |\n"
	i := strings.Index(string(readme), key)
	if i < 0 {
		t.Fatal("README has no argocd-cm snippet")
	}
	var lines []string
	for _, line := range strings.Split(string(readme)[i+len(key):], "\n") {
		if line != "" && !strings.HasPrefix(line, "    ") {
			break
		}
		lines = append(lines, strings.TrimPrefix(line, "    "))
	}
	got := strings.TrimRight(strings.Join(lines, "\n"), "\n")
	if got != strings.TrimRight(string(script), "\n") {
		t.Errorf("README's snippet differs from charts/dbgrant/files/argocd-health.lua; paste the script again")
	}
}

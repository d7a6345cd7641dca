package cpuprofile

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/pprof/profile"
)

// Stacks are leaf first, as in a profile's locations.
func TestClassifyByRequestFromTheRoot(t *testing.T) {
	status := []string{
		"runtime.mallocgc",
		"encoding/json.(*decodeState).object",
		"k8s.io/apiextensions-apiserver/pkg/registry/customresource.(*StatusREST).Update",
		"k8s.io/apiserver/pkg/endpoints/handlers.(*patcher).patchResource",
		"k8s.io/apiserver/pkg/endpoints/handlers.PatchResource.func1",
		"net/http.HandlerFunc.ServeHTTP",
	}
	if got := classify(byRequest, status, true); got != "status writes (…/status)" {
		t.Errorf("a status patch: got %q", got)
	}
	patch := append([]string{}, status...)
	patch[2] = "k8s.io/apiserver/pkg/registry/generic/registry.(*Store).Update"
	if got := classify(byRequest, patch, true); got != "patches and applies (PATCH)" {
		t.Errorf("a patch of the main resource: got %q", got)
	}
	gc := []string{"runtime.scanobject", "runtime.gcDrain", "runtime.gcBgMarkWorker"}
	if got := classify(byRequest, gc, true); got != "garbage collector (background)" {
		t.Errorf("the background marker: got %q", got)
	}
	if got := classify(byRequest, []string{"main.unknown"}, true); got != "other" {
		t.Errorf("an unknown stack: got %q", got)
	}
}

func TestClassifyByWorkFromTheLeaf(t *testing.T) {
	// Allocation inside a JSON decoder is JSON's.
	stack := []string{
		"runtime.mallocgc",
		"encoding/json.(*decodeState).object",
		"sigs.k8s.io/structured-merge-diff/v6/typed.(*TypedValue).Merge",
	}
	if got := classify(byWork, stack, false); got != "JSON encoding and decoding" {
		t.Errorf("got %q", got)
	}
	if got := classify(byWork, stack[2:], false); got != "managed fields (structured-merge-diff)" {
		t.Errorf("got %q", got)
	}
	if got := classify(byRuntime, []string{"runtime.mallocgc", "main.f"}, false); got != "garbage collection and allocation" {
		t.Errorf("got %q", got)
	}
}

// Start and stop by command, then summarise the file written: the profile
// appears under its name only once complete, and its CPU time adds up.
func TestCommandsWriteAProfileThatSummarises(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "cpu.pprof")
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { ReadCommands(r, t.Logf); close(done) }()
	if _, err := w.WriteString("cpu-profile start " + path + "\n"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(300 * time.Millisecond)
	x := 0
	for time.Now().Before(deadline) {
		x = strings.Count(strings.Repeat("ab", 1000), "b") + x%7
	}
	if _, err := os.Stat(path); err == nil {
		t.Fatal("the profile is visible under its name before it is stopped")
	}
	if _, err := w.WriteString("cpu-profile stop\n"); err != nil {
		t.Fatal(err)
	}
	_ = w.Close()
	<-done
	s, err := Summarize(path)
	if err != nil {
		t.Fatal(err)
	}
	sum := func(shares []Share) (total float64) {
		for _, sh := range shares {
			total += sh.Seconds
		}
		return total
	}
	if s.CPUSeconds <= 0 || s.DurationSeconds <= 0 {
		t.Fatalf("an empty profile after a busy loop: %+v (x=%d)", s, x)
	}
	for name, shares := range map[string][]Share{"byRequest": s.ByRequest, "byWork": s.ByWork} {
		if d := sum(shares) - s.CPUSeconds; d > 0.01 || d < -0.01 {
			t.Errorf("%s adds up to %.3f s, not the profile's %.3f s", name, sum(shares), s.CPUSeconds)
		}
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := profile.Parse(f); err != nil {
		t.Fatalf("not a profile pprof can read: %v", err)
	}
}

func TestSummarizeRefusesWhatIsNotACPUProfile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x")
	if err := os.WriteFile(path, []byte("not a profile"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Summarize(path); err == nil {
		t.Fatal("a file that is not a profile summarised")
	}
}

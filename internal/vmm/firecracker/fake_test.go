package firecracker

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// The test binary doubles as a fake firecracker: with envFake set it serves Firecracker's
// API on --api-sock, validating every request against firecracker.yaml and enforcing the
// preconditions real Firecracker checks (files exist, ids match, pre-boot only), so the
// driver's real Start runs against it end to end.
const (
	envFake   = "BANGER_FAKE_FIRECRACKER"
	envSpec   = "BANGER_FAKE_FIRECRACKER_SPEC"   // path of firecracker.yaml
	envRecord = "BANGER_FAKE_FIRECRACKER_RECORD" // JSON lines of accepted and refused requests
	envFault  = "BANGER_FAKE_FIRECRACKER_FAULT"  // "METHOD /path": answer that request with 400
	// fakeGreeting is what the fake guest agent sends right after the OK line, in the same
	// write, to catch a handshake that buffers past it.
	fakeGreeting  = "hello from the guest\n"
	fakeLifetime  = 2 * time.Minute
	fakeConsole   = "fake firecracker serial console\n"
	fakeFaultText = "injected fault for the test"
)

func TestMain(m *testing.M) {
	if os.Getenv(envFake) == "1" {
		os.Exit(runFakeFirecracker(os.Args[1:]))
	}
	os.Exit(m.Run())
}

type recordedRequest struct {
	Method string          `json:"method"`
	Path   string          `json:"path"`
	Body   json.RawMessage `json:"body,omitempty"`
	Status int             `json:"status"`
	Fault  string          `json:"fault,omitempty"`
}

type fakeFirecracker struct {
	spec   *apiSpec
	id     string
	record *os.File

	mu         sync.Mutex
	started    bool
	paused     bool
	configured bool // any pre-boot request accepted: a snapshot load is refused then
	bootSource bool
	metrics    bool
	vsock      net.Listener
}

func runFakeFirecracker(args []string) int {
	fs := flag.NewFlagSet("firecracker", flag.ContinueOnError)
	apiSock := fs.String("api-sock", "", "")
	id := fs.String("id", "", "")
	if err := fs.Parse(args); err != nil || *apiSock == "" || fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "fake firecracker: bad arguments %q\n", args)
		return 1
	}
	spec, err := loadAPISpec(os.Getenv(envSpec))
	if err != nil {
		fmt.Fprintf(os.Stderr, "fake firecracker: %v\n", err)
		return 1
	}
	rec, err := os.OpenFile(os.Getenv(envRecord), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		fmt.Fprintf(os.Stderr, "fake firecracker: %v\n", err)
		return 1
	}
	if _, err := os.Stat(*apiSock); err == nil {
		fmt.Fprintf(os.Stderr, "fake firecracker: %s already exists\n", *apiSock)
		return 1
	}
	ln, err := net.Listen("unix", *apiSock)
	if err != nil {
		fmt.Fprintf(os.Stderr, "fake firecracker: %v\n", err)
		return 1
	}
	os.Stdout.WriteString(fakeConsole)
	// Never outlive a test that crashed without killing us.
	time.AfterFunc(fakeLifetime, func() { os.Exit(3) })
	f := &fakeFirecracker{spec: spec, id: *id, record: rec}
	_ = http.Serve(ln, f)
	return 0
}

func (f *fakeFirecracker) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	status, fault, reply := f.handle(r, body)
	rec := recordedRequest{Method: r.Method, Path: r.URL.Path, Status: status, Fault: fault}
	if json.Valid(body) {
		rec.Body = body
	}
	line, _ := json.Marshal(rec)
	f.record.Write(append(line, '\n'))

	w.Header().Set("Content-Type", "application/json")
	switch {
	case fault != "":
		w.WriteHeader(status)
		json.NewEncoder(w).Encode(map[string]string{"fault_message": fault})
	case reply != nil:
		w.WriteHeader(status)
		json.NewEncoder(w).Encode(reply)
	default:
		w.WriteHeader(status)
	}
	if r.URL.Path == "/actions" && status == http.StatusNoContent && strings.Contains(string(body), ActionSendCtrlAltDel) {
		// The guest powers off in response, and Firecracker exits with it.
		time.AfterFunc(50*time.Millisecond, func() { os.Exit(0) })
	}
}

func (f *fakeFirecracker) handle(r *http.Request, body []byte) (int, string, any) {
	method, path := r.Method, r.URL.Path
	if want := os.Getenv(envFault); want != "" && want == method+" "+path {
		return http.StatusBadRequest, fakeFaultText, nil
	}
	params, err := f.spec.validateRequest(r, body)
	if err != nil {
		return http.StatusBadRequest, "request does not match the API: " + err.Error(), nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if method == http.MethodGet && path == "/" {
		state := "Not started"
		if f.started {
			state = "Running"
		}
		if f.paused {
			state = "Paused"
		}
		return http.StatusOK, "", InstanceInfo{AppName: "Firecracker", ID: f.id, State: state, VMMVersion: "1.17.0-dev"}
	}
	var b map[string]any
	_ = json.Unmarshal(body, &b)
	str := func(k string) string { s, _ := b[k].(string); return s }
	exists := func(field string) string {
		if _, err := os.Stat(str(field)); err != nil {
			return fmt.Sprintf("%s: %v", field, err)
		}
		return ""
	}
	postBoot := path == "/actions" || path == "/vm" || path == "/snapshot/create" || method == http.MethodPatch
	if !postBoot && f.started {
		return http.StatusBadRequest, "The requested operation is not supported after starting the microVM.", nil
	}
	if postBoot && path != "/actions" && !f.started {
		return http.StatusBadRequest, "The requested operation is not supported before starting the microVM.", nil
	}
	if path == "/snapshot/load" && f.configured {
		return http.StatusBadRequest, "Loading a microVM snapshot not allowed after configuring boot-specific resources.", nil
	}
	if !postBoot && path != "/snapshot/load" {
		f.configured = true
	}
	var fault string
	switch {
	case path == "/logger":
		fault = exists("log_path")
	case path == "/metrics":
		if fault = exists("metrics_path"); fault == "" && f.metrics {
			fault = "Reinitialization of metrics not allowed."
		}
		f.metrics = true
	case path == "/boot-source":
		if fault = exists("kernel_image_path"); fault == "" && str("initrd_path") != "" {
			fault = exists("initrd_path")
		}
		f.bootSource = fault == ""
	case strings.HasPrefix(path, "/drives/"):
		if params["drive_id"] != str("drive_id") {
			fault = "The id from the path does not match the id from the body!"
		} else {
			fault = exists("path_on_host")
		}
	case strings.HasPrefix(path, "/network-interfaces/"):
		if params["iface_id"] != str("iface_id") {
			fault = "The id from the path does not match the id from the body!"
		}
	case path == "/vsock":
		fault = f.listenVsock(str("uds_path"))
	case path == "/snapshot/create":
		if !f.paused {
			fault = "Cannot create a snapshot of a running microVM: pause it first."
		} else {
			for _, k := range []string{"snapshot_path", "mem_file_path"} {
				if err := os.WriteFile(str(k), []byte("fake "+k+"\n"), 0o600); err != nil {
					fault = err.Error()
				}
			}
		}
	case path == "/snapshot/load":
		mb, _ := b["mem_backend"].(map[string]any)
		mem, _ := mb["backend_path"].(string)
		if fault = exists("snapshot_path"); fault == "" {
			if data, err := os.ReadFile(mem); err != nil {
				fault = "Cannot load the guest memory: " + err.Error()
			} else if string(data) != "fake mem_file_path\n" {
				fault = "Cannot load the guest memory: not a snapshot memory file"
			}
		}
		if fault == "" {
			vo, _ := b["vsock_override"].(map[string]any)
			uds, _ := vo["uds_path"].(string)
			fault = f.listenVsock(uds)
		}
		if fault == "" {
			// Loaded paused unless resume_vm; the microVM counts as started.
			f.started, f.bootSource = true, true
			f.paused = b["resume_vm"] != true
		}
	case method == http.MethodPatch && strings.HasPrefix(path, "/drives/"):
		if params["drive_id"] != str("drive_id") {
			fault = "The id from the path does not match the id from the body!"
		} else {
			fault = exists("path_on_host")
		}
	case path == "/vm":
		// Firecracker refuses a state change before the microVM runs.
		if !f.started {
			fault = "The microVM is not running."
		} else {
			f.paused = str("state") == VMStatePaused
		}
	case path == "/actions":
		switch str("action_type") {
		case ActionInstanceStart:
			if f.started {
				fault = "The microVM is already running."
			} else if !f.bootSource {
				fault = "Cannot start microvm without kernel configuration."
			}
			f.started = fault == ""
		case ActionSendCtrlAltDel:
			if !f.started {
				fault = "The microVM is not running."
			}
		}
	}
	if fault != "" {
		return http.StatusBadRequest, fault, nil
	}
	return http.StatusNoContent, "", nil
}

// listenVsock serves hybrid vsock on path like Firecracker with a guest agent on AgentPort
// that greets and then echoes; connections to other ports are closed, as Firecracker does
// when nothing listens in the guest.
func (f *fakeFirecracker) listenVsock(path string) string {
	if f.vsock != nil {
		return "vsock already configured"
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Sprintf("Cannot create backend for vsock device: %v", err)
	}
	f.vsock = ln
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go serveHybrid(c)
		}
	}()
	return ""
}

func serveHybrid(c net.Conn) {
	defer c.Close()
	line, err := readLine(c)
	if err != nil || line != "CONNECT 1024" {
		return
	}
	if _, err := io.WriteString(c, "OK 1073741824\n"+fakeGreeting); err != nil {
		return
	}
	_, _ = io.Copy(c, c)
}

// readRecords returns the requests the fake firecracker saw.
func readRecords(t *testing.T, path string) []recordedRequest {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var out []recordedRequest
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if line == "" {
			continue
		}
		var r recordedRequest
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("record %q: %v", line, err)
		}
		out = append(out, r)
	}
	return out
}

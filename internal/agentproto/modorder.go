package agentproto

import (
	"bytes"
	"strings"
)

// The initrd's module order file (DefaultModulesDir/order) is a contract between the image
// builder, which writes it, and the guest init, which loads the modules it lists. One
// module a line, dependencies first:
//
//	virtio_ring.ko deps=
//	virtio_blk.ko deps=virtio,virtio_ring
//
// The deps= field lets the init start loading without reading every module file for its
// .modinfo first (under TCG that read cost ~40 ms of each boot). Initrds built before it
// existed list only the file; the init then reads the dependencies from the module.

// ModuleOrderDeps starts the dependency field of an order line.
const ModuleOrderDeps = "deps="

// ModuleOrderLine is the order file's line for module file file with dependencies deps
// (module names), without the newline.
func ModuleOrderLine(file string, deps []string) string {
	return file + " " + ModuleOrderDeps + strings.Join(deps, ",")
}

// ParseModuleOrderLine reads one line of the order file: the module's file and, when the
// builder listed them, its dependencies with '-' as '_' (listed says whether it did; an
// empty "deps=" means none). A blank or comment line yields an empty file.
func ParseModuleOrderLine(line string) (file string, deps []string, listed bool) {
	fields := strings.Fields(line)
	if len(fields) == 0 || strings.HasPrefix(fields[0], "#") {
		return "", nil, false
	}
	for _, f := range fields[1:] {
		v, ok := strings.CutPrefix(f, ModuleOrderDeps)
		if !ok {
			continue
		}
		listed = true
		deps = append(deps, splitDeps(v)...)
	}
	return fields[0], deps, listed
}

// ModuleDepends finds the depends= field in a module's .modinfo strings (NUL-separated
// key=value pairs) without parsing the ELF: the bytes "\x00depends=" occur nowhere else.
// A compressed module yields nothing.
func ModuleDepends(data []byte) []string {
	i := bytes.Index(data, []byte("\x00depends="))
	if i < 0 {
		return nil
	}
	v := data[i+len("\x00depends="):]
	if end := bytes.IndexByte(v, 0); end >= 0 {
		v = v[:end]
	}
	return splitDeps(string(v))
}

// splitDeps splits a comma-separated list of module names, '-' read as '_'.
func splitDeps(v string) []string {
	var deps []string
	for _, d := range strings.Split(v, ",") {
		if d = strings.TrimSpace(d); d != "" {
			deps = append(deps, strings.ReplaceAll(d, "-", "_"))
		}
	}
	return deps
}

// Package e2e boots real VMs through the real binaries: bangerd and its root helper run
// inside a network namespace the tests create (with a second namespace as a fake
// internet), and the banger CLI drives them. Needs root, qemu and e2fsprogs; without them
// the tests skip, except under CI=true where that is a failure.
package e2e

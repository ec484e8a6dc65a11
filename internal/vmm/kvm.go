package vmm

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"
)

// KVMStatus says whether hardware virtualisation can run guests on this host.
type KVMStatus struct {
	Usable bool
	Detail string // what was found
	Fix    string // how to make KVM usable; empty when it is
}

const (
	kvmDevice = "/dev/kvm"
	// kvm_pvm is a paravirtualised nested KVM: KVM_CREATE_VM works, yet ordinary guest
	// kernels hang early in boot, so /dev/kvm alone is not evidence of usable KVM.
	kvmPVMModule = "/sys/module/kvm_pvm"
	// kvmGetAPIVersion is _IO(KVMIO, 0x00); every KVM since 2.6.22 answers 12.
	kvmGetAPIVersion = 0xAE00
	kvmAPIVersion    = 12
)

// ProbeKVM checks /dev/kvm quickly, without starting a guest.
func ProbeKVM() KVMStatus {
	return probeKVM(kvmDevice, kvmPVMModule)
}

func probeKVM(device, pvmModule string) KVMStatus {
	f, err := os.OpenFile(device, os.O_RDWR, 0)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return KVMStatus{
			Detail: device + " does not exist",
			Fix:    "enable hardware virtualisation (VT-x/AMD-V) in the firmware or the hypervisor and load kvm_intel or kvm_amd (modprobe kvm_intel)",
		}
	case errors.Is(err, fs.ErrPermission):
		return KVMStatus{
			Detail: "no permission to open " + device,
			Fix:    "add your user to the kvm group (sudo usermod -aG kvm $USER) and log in again",
		}
	case err != nil:
		return KVMStatus{Detail: fmt.Sprintf("opening %s: %v", device, err), Fix: "check that " + device + " is a working KVM device"}
	}
	defer f.Close()
	v, err := unix.IoctlRetInt(int(f.Fd()), kvmGetAPIVersion)
	if err != nil || v != kvmAPIVersion {
		return KVMStatus{
			Detail: fmt.Sprintf("%s does not answer KVM_GET_API_VERSION (got %d, %v)", device, v, err),
			Fix:    "check that " + device + " is a KVM device",
		}
	}
	if _, err := os.Stat(pvmModule); err == nil {
		return KVMStatus{
			Detail: device + " is backed by nested PVM (kvm_pvm), which hangs ordinary guest kernels",
			Fix:    "run on a host with hardware KVM (bare metal, or a VM with nested VT-x/AMD-V); until then qemu runs guests with TCG",
		}
	}
	return KVMStatus{Usable: true, Detail: device + " is usable (KVM API 12)"}
}

package daemon

import (
	"fmt"
	"path/filepath"
	"strings"

	"banger/internal/agentproto"
	"banger/internal/model"
	"banger/internal/vmm"
)

// spec builds the driver's view of vm.
func (d *Daemon) spec(vm *model.VM, im *model.Image) (vmm.Spec, error) {
	kernel, ok := im.FileByRole(model.RoleKernel)
	if !ok {
		return vmm.Spec{}, fmt.Errorf("image %s has no kernel", im.Name)
	}
	rootfs, ok := im.FileByRole(model.RoleRootfs)
	if !ok {
		return vmm.Spec{}, fmt.Errorf("image %s has no rootfs", im.Name)
	}
	s := vmm.Spec{
		ID: vm.ID, Name: vm.Name, Dir: vm.Dir,
		Kernel: filepath.Join(im.Dir, kernel.Name),
		Drives: []vmm.Drive{
			{ID: "rootfs", Path: filepath.Join(im.Dir, rootfs.Name), ReadOnly: true, Root: true},
			{ID: "system", Path: filepath.Join(vm.Dir, systemDiskName)},
			{ID: "work", Path: filepath.Join(vm.Dir, workDiskName)},
		},
		VCPU: vm.VCPU, MemoryMiB: vm.MemoryMiB,
		LogPath:     filepath.Join(vm.Dir, consoleLogName),
		LogMax:      d.cfg.ConsoleLogMaxBytes,
		MetricsPath: filepath.Join(vm.Dir, metricsName),
		CID:         vm.CID,
		ChannelPath: filepath.Join(vm.Dir, channelName),
	}
	if initrd, ok := im.FileByRole(model.RoleInitrd); ok {
		s.Initrd = filepath.Join(im.Dir, initrd.Name)
	}
	args := []string{im.KernelArgs,
		agentproto.ParamName + "=" + vm.Name,
		agentproto.ParamRoot + "=/dev/vda", agentproto.ParamSystem + "=/dev/vdb", agentproto.ParamWork + "=/dev/vdc"}
	if vm.Workspace != "" {
		// The fourth drive: drivers attach drives in order, so it is /dev/vdd.
		s.Drives = append(s.Drives, vmm.Drive{ID: "workspace", Path: filepath.Join(vm.Dir, workspaceDiskName)})
		args = append(args, agentproto.ParamWorkspace+"=/dev/vdd", agentproto.ParamWorkspacePath+"="+vm.Workspace)
	}
	args = addMounts(&s, vm, args)
	if d.cfg.Network.Enabled {
		s.Net = &vmm.NetIface{Tap: vm.Tap, MAC: vm.MAC}
		args = append(args,
			fmt.Sprintf("%s=%s/%d", agentproto.ParamIP, vm.GuestIP, d.prefix.Bits()),
			agentproto.ParamGateway+"="+d.prefix.Addr().String(),
			agentproto.ParamDNS+"="+d.prefix.Addr().String())
	}
	s.BootArgs = strings.TrimSpace(strings.Join(args, " "))
	return s, nil
}

// Package guest is what runs inside every VM as the static banger-agent binary, the
// initrd's /init: PID 1's init (overlay root, modules, work and workspace disks, network,
// hand-over to the rootfs's init), the agent server (exec with PTY, the reaper, put/get,
// list, identity, shutdown) and the channel loops (virtio-serial reopened per session,
// AF_VSOCK). It speaks internal/agentproto and links nothing of the host: no daemon,
// store or host client (see deps_test.go). The host side is internal/agentclient.
package guest

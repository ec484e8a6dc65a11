package guest

// workspaceMountData are the workspace's ext4 mount options. The host packs the image
// with lazy_itable_init (its inode tables are never written, so they cost neither disk
// nor upload); without noinit_itable the guest kernel's ext4lazyinit thread would then
// zero them — tens of MB under emulation, on the vCPU the command runs on. Inodes past a
// group's high-water mark are initialised when allocated either way.
const workspaceMountData = "noinit_itable"

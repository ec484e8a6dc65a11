// Package agentclient is the host side of the guest agent protocol (internal/agentproto):
// the yamux client session, ping, exec, put/get copies, list, identity and shutdown. It
// trusts nothing the guest sends: replies and frames are bounded, text is made safe to
// print, and a get's archive is extracted with hostPolicy (confined to the name asked
// for, modes masked, size capped). bangerd, the CLI and the containerd shim use it; it
// never links the guest's netlink, PTY or vsock code.
package agentclient

// Package helper is banger's root helper: a small RPC server, running as root, that performs
// the few privileged network operations the unprivileged daemon needs (bridge, taps, NAT)
// and nothing else, plus the client the daemon uses to call it.
//
// The helper trusts no argument. Callers are authorised by their socket credentials, every
// tap name, address and MAC is checked against the helper's own configuration before
// anything is touched, and the bridge name and tap owner come only from that
// configuration, so even an allowed caller can act on banger's interfaces alone.
package helper

import (
	"net/netip"
)

// Methods served by the helper.
const (
	MethodPing         = "helper.ping"
	MethodEnsureBridge = "helper.ensure_bridge"
	MethodCreateTap    = "helper.create_tap"
	MethodDeleteTap    = "helper.delete_tap"
	MethodEnableNAT    = "helper.enable_nat"
	MethodDisableNAT   = "helper.disable_nat"
	MethodCleanup      = "helper.cleanup"
	MethodState        = "helper.state"
)

// TapParams names a tap for create_tap and delete_tap. MAC (create_tap only, optional) is
// the host-side address of the tap, not the guest's.
type TapParams struct {
	Tap string `json:"tap"`
	MAC string `json:"mac,omitempty"`
}

// NATParams names a guest address for enable_nat and disable_nat.
type NATParams struct {
	IP string `json:"ip"`
}

// PingResult identifies the helper and the network it manages, so the daemon can notice a
// helper configured for a different bridge or subnet than its own.
type PingResult struct {
	PID    int    `json:"pid"`
	Bridge string `json:"bridge"`
	Prefix string `json:"prefix"`
}

// StateResult is what exists on the host, for the daemon's reconciliation.
type StateResult struct {
	Bridge string       `json:"bridge"`
	Taps   []string     `json:"taps"`
	NATIPs []netip.Addr `json:"nat_ips"`
}

package hostnet

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// The firewall lives in one table of its own so banger never edits anyone else's rules and
// Cleanup can drop it whole:
//
//	table ip banger {
//	  set nat_guests { type ipv4_addr }
//	  chain postrouting { type nat hook postrouting priority srcnat; policy accept;
//	    ip saddr @nat_guests oifname != BRIDGE ip daddr != SUBNET masquerade   # or oifname UPLINK
//	  }
//	  chain forward { type filter hook forward priority filter; policy accept;
//	    ct state established,related accept
//	    ip saddr SUBNET ip daddr SUBNET accept          # guest to guest, even via br_netfilter
//	    iifname BRIDGE ip saddr @nat_guests oifname != BRIDGE accept   # or oifname UPLINK
//	    iifname BRIDGE drop
//	    oifname BRIDGE drop
//	  }
//	}
//
// Why this shape:
//   - Guests always reach the bridge address (DNS, the host) and each other: that traffic
//     is local input or bridged, and never passes the IP forward hook (br_netfilter aside).
//   - Anything a guest sends beyond the host is routed, so the forward chain sees it. Only
//     guests in nat_guests get through; the rest are dropped, which is what "no NAT" means.
//   - Replies come back as established/related. New connections from elsewhere into the
//     guest subnet are dropped: guests are disposable and not meant to be exposed.
//   - Per-guest state is one set element, so enabling or disabling NAT is a single atomic
//     element change, idempotent by nature, and the rules never need rewriting.
//   - The policy stays accept so that the host's other forwarded traffic is not affected.
//     A base chain elsewhere with policy drop (e.g. Docker's) still applies; see
//     docs/networking.md.
//
// Guests choose their own source address, so one guest could borrow a NAT guest's IP; the
// set tells apart addresses, not VMs. That is accepted: all guests belong to one user.

const (
	tableName   = "banger"
	setName     = "nat_guests"
	postChain   = "postrouting"
	fwdChain    = "forward"
	ipForward   = "/proc/sys/net/ipv4/ip_forward"
	commentBase = "banger:"
)

var table = &nftables.Table{Name: tableName, Family: nftables.TableFamilyIPv4}

// EnableNAT lets guestIP reach beyond the host, masqueraded behind the host's address.
// It creates the firewall table on first use and turns on IPv4 forwarding.
func (n Net) EnableNAT(ctx context.Context, guestIP netip.Addr) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := n.Validate(); err != nil {
		return err
	}
	if err := n.ValidGuestIP("ip", guestIP); err != nil {
		return err
	}
	mu.Lock()
	defer mu.Unlock()
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("opening nftables: %w", err)
	}
	set, err := n.ensureRuleset(c)
	if err != nil {
		return err
	}
	// Adding an element that is already there is not an error without NLM_F_EXCL.
	if err := c.SetAddElements(set, []nftables.SetElement{{Key: guestIP.AsSlice()}}); err != nil {
		return fmt.Errorf("adding %s to nftables set %s: %w", guestIP, setName, err)
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("adding %s to nftables set %s: %w", guestIP, setName, err)
	}
	return enableForwarding()
}

// DisableNAT removes guestIP from NAT; it is not an error if it was not there.
func (n Net) DisableNAT(ctx context.Context, guestIP netip.Addr) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := n.ValidGuestIP("ip", guestIP); err != nil {
		return err
	}
	mu.Lock()
	defer mu.Unlock()
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("opening nftables: %w", err)
	}
	set, err := findSet(c)
	if err != nil || set == nil {
		return err
	}
	elems, err := c.GetSetElements(set)
	if err != nil {
		return fmt.Errorf("listing nftables set %s: %w", setName, err)
	}
	key := guestIP.AsSlice()
	if !slices.ContainsFunc(elems, func(e nftables.SetElement) bool { return bytes.Equal(e.Key, key) }) {
		return nil
	}
	if err := c.SetDeleteElements(set, []nftables.SetElement{{Key: key}}); err != nil {
		return fmt.Errorf("removing %s from nftables set %s: %w", guestIP, setName, err)
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("removing %s from nftables set %s: %w", guestIP, setName, err)
	}
	return nil
}

// natGuests lists the set's addresses; no table means none.
func natGuests() ([]netip.Addr, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("opening nftables: %w", err)
	}
	set, err := findSet(c)
	if err != nil || set == nil {
		return nil, err
	}
	elems, err := c.GetSetElements(set)
	if err != nil {
		return nil, fmt.Errorf("listing nftables set %s: %w", setName, err)
	}
	var out []netip.Addr
	for _, e := range elems {
		if a, ok := netip.AddrFromSlice(e.Key); ok {
			out = append(out, a)
		}
	}
	slices.SortFunc(out, func(a, b netip.Addr) int { return a.Compare(b) })
	return out, nil
}

// tableExists reports whether banger's table is present.
func tableExists(c *nftables.Conn) (bool, error) {
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return false, fmt.Errorf("listing nftables tables: %w", err)
	}
	return slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == tableName }), nil
}

// findSet returns the nat_guests set, or nil when the table or set does not exist.
func findSet(c *nftables.Conn) (*nftables.Set, error) {
	ok, err := tableExists(c)
	if err != nil || !ok {
		return nil, err
	}
	sets, err := c.GetSets(table)
	if err != nil {
		return nil, fmt.Errorf("listing nftables sets: %w", err)
	}
	for _, s := range sets {
		if s.Name == setName {
			return s, nil
		}
	}
	return nil, nil
}

// deleteTable drops banger's table if it exists.
func deleteTable() error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("opening nftables: %w", err)
	}
	ok, err := tableExists(c)
	if err != nil || !ok {
		return err
	}
	c.DelTable(table)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("deleting nftables table %s: %w", tableName, err)
	}
	return nil
}

// ensureRuleset makes the table match the wanted rules and returns its set. Rules carry a
// comment naming their purpose and parameters; when the table already holds exactly the
// wanted comments in order nothing is touched, so repeated calls add no duplicates.
// Otherwise (first use, a changed bridge or uplink, or rules edited by hand) the table is
// rebuilt in one atomic transaction that keeps the current NAT guests.
func (n Net) ensureRuleset(c *nftables.Conn) (*nftables.Set, error) {
	want := n.rules()
	set, err := findSet(c)
	if err != nil {
		return nil, err
	}
	var keep []nftables.SetElement
	if set != nil {
		current, err := currentComments(c)
		if err != nil {
			return nil, err
		}
		if slices.Equal(current, ruleComments(want)) {
			return set, nil
		}
		elems, err := c.GetSetElements(set)
		if err != nil {
			return nil, fmt.Errorf("listing nftables set %s: %w", setName, err)
		}
		for _, e := range elems {
			keep = append(keep, nftables.SetElement{Key: e.Key})
		}
	}
	if ok, err := tableExists(c); err != nil {
		return nil, err
	} else if ok {
		c.DelTable(table)
	}
	c.AddTable(table)
	set = &nftables.Set{Table: table, Name: setName, KeyType: nftables.TypeIPAddr}
	if err := c.AddSet(set, keep); err != nil {
		return nil, fmt.Errorf("adding nftables set %s: %w", setName, err)
	}
	accept := nftables.ChainPolicyAccept
	post := c.AddChain(&nftables.Chain{
		Name: postChain, Table: table, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &accept,
	})
	fwd := c.AddChain(&nftables.Chain{
		Name: fwdChain, Table: table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept,
	})
	for _, r := range want {
		ch := fwd
		if r.chain == postChain {
			ch = post
		}
		c.AddRule(&nftables.Rule{
			Table: table, Chain: ch, Exprs: r.exprs(set),
			UserData: userdata.AppendString(nil, userdata.TypeComment, r.comment),
		})
	}
	if err := c.Flush(); err != nil {
		return nil, fmt.Errorf("creating nftables table %s: %w", tableName, err)
	}
	// The set's kernel handle is needed for element changes in later batches.
	set, err = findSet(c)
	if err != nil {
		return nil, err
	}
	if set == nil {
		return nil, fmt.Errorf("nftables set %s missing right after creating it", setName)
	}
	return set, nil
}

type rule struct {
	chain   string
	comment string
	exprs   func(set *nftables.Set) []expr.Any
}

func ruleComments(rs []rule) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = r.chain + "/" + r.comment
	}
	return out
}

// currentComments lists chain/comment of every rule in the table's two chains, in order.
func currentComments(c *nftables.Conn) ([]string, error) {
	var out []string
	for _, name := range []string{postChain, fwdChain} {
		rules, err := c.GetRules(table, &nftables.Chain{Name: name, Table: table})
		if err != nil {
			// A missing chain just means the table needs rebuilding.
			return nil, nil
		}
		for _, r := range rules {
			comment, _ := userdata.GetString(r.UserData, userdata.TypeComment)
			out = append(out, name+"/"+comment)
		}
	}
	return out, nil
}

// rules returns the wanted rules in chain order (postrouting first, then forward).
func (n Net) rules() []rule {
	// "leaving": where NAT guests may go. With an uplink only through it, otherwise
	// anywhere except back into the bridge.
	leaving := func() []expr.Any { return ifCmp(expr.MetaKeyOIFNAME, expr.CmpOpNeq, n.Bridge) }
	leavingDesc := "oif!=" + n.Bridge
	if n.Uplink != "" {
		leaving = func() []expr.Any { return ifCmp(expr.MetaKeyOIFNAME, expr.CmpOpEq, n.Uplink) }
		leavingDesc = "oif=" + n.Uplink
	}
	subnet := n.Prefix.Masked()
	return []rule{
		{postChain, commentBase + "masquerade-nat-guests " + leavingDesc + " daddr!=" + subnet.String(), func(set *nftables.Set) []expr.Any {
			return concat(saddrInSet(set), leaving(), addrInPrefix(daddrOffset, subnet, expr.CmpOpNeq), []expr.Any{&expr.Masq{}})
		}},
		// With br_netfilter loaded, traffic between guests on the bridge passes the IP hooks
		// too, with the bridge ports or the bridge as interfaces depending on the kernel; it
		// is recognised by its addresses instead, and always allowed.
		{fwdChain, commentBase + "accept-guest-to-guest " + subnet.String(), func(*nftables.Set) []expr.Any {
			return concat(addrInPrefix(saddrOffset, subnet, expr.CmpOpEq), addrInPrefix(daddrOffset, subnet, expr.CmpOpEq),
				[]expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}})
		}},
		{fwdChain, commentBase + "accept-established", func(*nftables.Set) []expr.Any {
			return []expr.Any{
				&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
				&expr.Bitwise{
					SourceRegister: 1, DestRegister: 1, Len: 4,
					Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED),
					Xor:  binaryutil.NativeEndian.PutUint32(0),
				},
				&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
				&expr.Verdict{Kind: expr.VerdictAccept},
			}
		}},
		{fwdChain, commentBase + "accept-nat-guests iif=" + n.Bridge + " " + leavingDesc, func(set *nftables.Set) []expr.Any {
			return concat(ifCmp(expr.MetaKeyIIFNAME, expr.CmpOpEq, n.Bridge), saddrInSet(set), leaving(),
				[]expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}})
		}},
		{fwdChain, commentBase + "drop-from-guests iif=" + n.Bridge, func(*nftables.Set) []expr.Any {
			return concat(ifCmp(expr.MetaKeyIIFNAME, expr.CmpOpEq, n.Bridge), []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}})
		}},
		{fwdChain, commentBase + "drop-to-guests oif=" + n.Bridge, func(*nftables.Set) []expr.Any {
			return concat(ifCmp(expr.MetaKeyOIFNAME, expr.CmpOpEq, n.Bridge), []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}})
		}},
	}
}

func concat(parts ...[]expr.Any) []expr.Any { return slices.Concat(parts...) }

// ifCmp compares the input or output interface name, padded as the kernel stores it.
func ifCmp(key expr.MetaKey, op expr.CmpOp, name string) []expr.Any {
	data := make([]byte, unix.IFNAMSIZ)
	copy(data, name)
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: data},
	}
}

// Offsets of the IPv4 source and destination addresses in the network header.
const (
	saddrOffset = 12
	daddrOffset = 16
)

// addrInPrefix compares the IPv4 address at offset, masked to p's length, with p's network.
func addrInPrefix(offset uint32, p netip.Prefix, op expr.CmpOp) []expr.Any {
	mask := net.CIDRMask(p.Bits(), 32)
	network := p.Masked().Addr().As4()
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: op, Register: 1, Data: network[:]},
	}
}

// saddrInSet matches packets whose IPv4 source address is in set.
func saddrInSet(set *nftables.Set) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID},
	}
}

// enableForwarding turns on IPv4 routing, without which nothing leaves the bridge subnet.
func enableForwarding() error {
	b, err := os.ReadFile(ipForward)
	if err != nil {
		return fmt.Errorf("reading %s: %w", ipForward, err)
	}
	if strings.TrimSpace(string(b)) == "1" {
		return nil
	}
	if err := os.WriteFile(ipForward, []byte("1\n"), 0o644); err != nil {
		return fmt.Errorf("enabling IPv4 forwarding in %s: %w", ipForward, err)
	}
	return nil
}

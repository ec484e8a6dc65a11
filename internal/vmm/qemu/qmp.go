package qemu

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"time"
)

// qmpTimeout bounds a QMP exchange whatever the caller's context says: QEMU answers
// in milliseconds, and a wedged VMM must not hang the daemon.
const qmpTimeout = 5 * time.Second

// qmpMessage is any message QEMU sends: a greeting, a command's return or error, or an
// asynchronous event (which is skipped).
type qmpMessage struct {
	QMP    json.RawMessage `json:"QMP"`
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
	Event string `json:"event"`
}

// QMPError is an error QEMU returned for a command.
type QMPError struct {
	Command string
	Class   string
	Desc    string
}

func (e *QMPError) Error() string {
	return fmt.Sprintf("qmp %s: %s: %s", e.Command, e.Class, e.Desc)
}

// qmpCall runs one QMP command on the monitor socket at path and decodes its return value
// into out (if non-nil). QEMU serves one QMP client at a time, so callers serialise.
func qmpCall(ctx context.Context, path, command string, args, out any) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return fmt.Errorf("qmp %s: connecting to %s: %w", command, path, err)
	}
	defer conn.Close()
	// The context's end interrupts the exchange through AfterFunc, so that ctx.Err() is
	// already set when the read fails; the fixed deadline only guards a wedged QEMU.
	_ = conn.SetDeadline(time.Now().Add(qmpTimeout))
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	defer stop()

	dec := json.NewDecoder(conn)
	enc := json.NewEncoder(conn)
	var greeting qmpMessage
	if err := dec.Decode(&greeting); err != nil {
		return fmt.Errorf("qmp %s: reading greeting: %w", command, ctxErr(ctx, err))
	}
	if greeting.QMP == nil {
		return fmt.Errorf("qmp %s: %s is not a QMP monitor", command, path)
	}
	if err := exchange(ctx, dec, enc, "qmp_capabilities", nil, nil); err != nil {
		return err
	}
	return exchange(ctx, dec, enc, command, args, out)
}

func exchange(ctx context.Context, dec *json.Decoder, enc *json.Encoder, command string, args, out any) error {
	req := map[string]any{"execute": command}
	if args != nil {
		req["arguments"] = args
	}
	if err := enc.Encode(req); err != nil {
		return fmt.Errorf("qmp %s: sending: %w", command, ctxErr(ctx, err))
	}
	for {
		var m qmpMessage
		if err := dec.Decode(&m); err != nil {
			return fmt.Errorf("qmp %s: reading reply: %w", command, ctxErr(ctx, err))
		}
		switch {
		case m.Error != nil:
			return &QMPError{Command: command, Class: m.Error.Class, Desc: m.Error.Desc}
		case m.Return != nil:
			if out == nil {
				return nil
			}
			if err := json.Unmarshal(m.Return, out); err != nil {
				return fmt.Errorf("qmp %s: decoding reply: %w", command, err)
			}
			return nil
		}
		// An event: QEMU may interleave them with replies.
	}
}

// ctxErr reports the context's end rather than the socket deadline error it caused.
func ctxErr(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return cerr
	}
	return err
}

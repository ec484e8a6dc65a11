package rpc

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"time"

	"banger/internal/opid"
)

// Client is one connection to a banger RPC server. Calls on one client are sequential.
type Client struct {
	conn net.Conn
	br   *bufio.Reader
}

// Dial connects to the unix socket at path.
func Dial(ctx context.Context, path string) (*Client, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("connecting to %s: %w", path, err)
	}
	return &Client{conn: c, br: bufio.NewReaderSize(c, 64<<10)}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Call sends method with params and decodes the result into out (which may be nil). The
// context's op id, if any, is forwarded so the server logs under the caller's id. A server
// error comes back as *ErrorResponse.
func (c *Client) Call(ctx context.Context, method string, params, out any) error {
	if err := c.send(ctx, method, params); err != nil {
		// A server that refuses the connection (failed authorization) answers and closes
		// before reading the request; that answer, already buffered, says why.
		if errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET) {
			var er *ErrorResponse
			if rerr := c.receive(ctx, method, out); errors.As(rerr, &er) {
				return er
			}
		}
		return err
	}
	return c.receive(ctx, method, out)
}

func (c *Client) send(ctx context.Context, method string, params any) error {
	req := Request{Version: Version, Method: method, OpID: opid.From(ctx)}
	if params != nil {
		raw, err := json.Marshal(params)
		if err != nil {
			return fmt.Errorf("encoding %s params: %w", method, err)
		}
		req.Params = raw
	}
	b, err := json.Marshal(req)
	if err != nil {
		return err
	}
	if dl, ok := ctx.Deadline(); ok {
		c.conn.SetWriteDeadline(dl)
	}
	if _, err := c.conn.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("sending %s: %w", method, err)
	}
	return nil
}

func (c *Client) receive(ctx context.Context, method string, out any) error {
	// Unblock the read when ctx ends; the connection is unusable afterwards.
	stop := context.AfterFunc(ctx, func() { c.conn.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	// Responses have no size limit (a vm.list can be long).
	line, err := ReadLine(c.br, 0)
	if err == nil && !bytes.HasSuffix(line, []byte("\n")) {
		err = io.EOF
	}
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("%s: %w", method, ctx.Err())
		}
		if err == io.EOF {
			return fmt.Errorf("%s: %w", method, ErrConnectionLost)
		}
		return fmt.Errorf("reading %s response: %w", method, err)
	}
	var resp Response
	if err := json.Unmarshal(line, &resp); err != nil {
		return fmt.Errorf("decoding %s response: %w", method, err)
	}
	if resp.Error != nil {
		if resp.Error.OpID == "" {
			resp.Error.OpID = resp.OpID
		}
		return resp.Error
	}
	if out != nil && len(resp.Result) > 0 {
		if err := json.Unmarshal(resp.Result, out); err != nil {
			return fmt.Errorf("decoding %s result: %w", method, err)
		}
	}
	return nil
}

// Stream calls a streaming method; on success the returned connection carries raw bytes.
func (c *Client) Stream(ctx context.Context, method string, params, out any) (*ClientStream, error) {
	if err := c.Call(ctx, method, params, out); err != nil {
		return nil, err
	}
	return &ClientStream{c: c}, nil
}

// ClientStream is the raw byte stream after a streaming call was accepted.
type ClientStream struct{ c *Client }

func (s *ClientStream) Read(p []byte) (int, error)  { return s.c.br.Read(p) }
func (s *ClientStream) Write(p []byte) (int, error) { return s.c.conn.Write(p) }
func (s *ClientStream) Close() error                { return s.c.conn.Close() }

// CloseWrite half-closes the stream.
func (s *ClientStream) CloseWrite() error {
	if cw, ok := s.c.conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// ErrConnectionLost is a call whose connection the server closed before answering (the
// daemon exited or crashed).
var ErrConnectionLost = errors.New("server closed the connection")

// Call dials socket, makes one call and closes the connection.
func Call(ctx context.Context, socket, method string, params, out any) error {
	c, err := Dial(ctx, socket)
	if err != nil {
		return err
	}
	defer c.Close()
	return c.Call(ctx, method, params, out)
}

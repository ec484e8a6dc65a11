package client

import (
	"context"

	"banger/internal/api"
)

// PoolList is pool.list: the configured warm pools and how full they are.
func (c *Client) PoolList(ctx context.Context) ([]api.PoolInfo, error) {
	var res api.PoolListResult
	if err := c.call(ctx, api.MethodPoolList, nil, &res); err != nil {
		return nil, err
	}
	return res.Pools, nil
}

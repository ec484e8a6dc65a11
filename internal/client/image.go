package client

import (
	"context"
	"fmt"

	"banger/internal/api"
	"banger/internal/model"
	"banger/internal/opid"
)

// ImageImport is image.import; paths must be absolute (the daemon reads them itself).
func (c *Client) ImageImport(ctx context.Context, p api.ImageImportParams) (*model.Image, error) {
	return c.imageCall(ctx, api.MethodImageImport, p)
}

// ImageList is image.list.
func (c *Client) ImageList(ctx context.Context) ([]model.Image, error) {
	var res api.ImageListResult
	if err := c.call(ctx, api.MethodImageList, nil, &res); err != nil {
		return nil, err
	}
	return res.Images, nil
}

// ImageShow is image.show.
func (c *Client) ImageShow(ctx context.Context, ref string) (*model.Image, error) {
	return c.imageCall(ctx, api.MethodImageShow, api.ImageRef{Image: ref})
}

// ImageDelete is image.delete; it returns the image as it was.
func (c *Client) ImageDelete(ctx context.Context, ref string) (*model.Image, error) {
	return c.imageCall(ctx, api.MethodImageDelete, api.ImageRef{Image: ref})
}

// ImageCatalog is image.catalog.
func (c *Client) ImageCatalog(ctx context.Context) ([]api.CatalogEntry, error) {
	var res api.CatalogResult
	if err := c.call(ctx, api.MethodImageCatalog, nil, &res); err != nil {
		return nil, err
	}
	return res.Entries, nil
}

// ImagePull is image.pull.begin followed until the image is installed.
func (c *Client) ImagePull(ctx context.Context, p api.ImagePullParams, onStage StageFunc) (*model.Image, error) {
	return c.imageOp(ctx, api.MethodImagePullBegin, p, onStage)
}

// ImageBuild is image.build (an async operation) followed until the image is installed.
func (c *Client) ImageBuild(ctx context.Context, p api.ImageBuildParams, onStage StageFunc) (*model.Image, error) {
	return c.imageOp(ctx, api.MethodImageBuild, p, onStage)
}

func (c *Client) imageOp(ctx context.Context, method string, params any, onStage StageFunc) (*model.Image, error) {
	ctx, _ = opid.Ensure(ctx)
	var begin api.BeginResult
	if err := c.call(ctx, method, params, &begin); err != nil {
		return nil, err
	}
	st, err := c.FollowOp(ctx, begin.OpID, onStage)
	if err != nil {
		return nil, err
	}
	if st.Image == nil {
		return nil, fmt.Errorf("operation %s finished without an image", begin.OpID)
	}
	return st.Image, nil
}

func (c *Client) imageCall(ctx context.Context, method string, params any) (*model.Image, error) {
	var res api.ImageResult
	if err := c.call(ctx, method, params, &res); err != nil {
		return nil, err
	}
	return &res.Image, nil
}

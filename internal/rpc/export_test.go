package rpc

// PendingBytes exposes how many request-line bytes s holds reserved, so a test can order
// two connections' reads without sleeping.
func PendingBytes(s *Server) int64 { return s.pending.Load() }

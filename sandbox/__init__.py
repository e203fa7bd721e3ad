"""A local, in-memory Codat API: the peer for development and for every worker test."""

//! Unit tests of the discovery plumbing and parsers.

//! Lattice integration tests, one binary with a module per topic.

mod crash;

//! `pgshepherd check`: offline validation of plans and their migration sets.

//! A throwaway PostgreSQL cluster for the demo and the tests.

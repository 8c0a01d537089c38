//! Soak checks: SQL, HTTP and built-in PostgreSQL signals, and the verdict rules
//! that turn their samples into decisions.

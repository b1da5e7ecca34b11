//! Empty: this package exists for tests/ and benches/.

//! Hooks for the end-to-end tests, compiled into debug builds only (the tests run the debug binary;
//! a release build has none of this).

/// Panics when a simple Query's text equals `CLOAK_TEST_PANIC_ON` (not `PGCLOAK_*`: those are config
/// keys), so a test can show that a panicking session ends alone.
pub fn panic_on_query(sql: &[u8]) {
    static ON: std::sync::OnceLock<Option<Vec<u8>>> = std::sync::OnceLock::new();
    let on =
        ON.get_or_init(|| std::env::var_os("CLOAK_TEST_PANIC_ON").map(|v| v.into_encoded_bytes()));
    if on.as_deref() == Some(sql) {
        panic!("test hook: this session panics on purpose (CLOAK_TEST_PANIC_ON)");
    }
}

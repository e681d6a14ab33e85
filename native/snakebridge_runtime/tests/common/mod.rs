//! What the runtime's integration tests share.

use std::path::PathBuf;

/// The installed worker package (`_build/dev/lib/snakebridge/priv/python`,
/// put there by `mix compile`), or the directory named by
/// `SNAKEBRIDGE_WORKER_PATH`.
pub fn worker_path() -> String {
    let path = std::env::var("SNAKEBRIDGE_WORKER_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../_build/dev/lib/snakebridge/priv/python"));
    assert!(
        path.join("snakebridge_worker").is_dir(),
        "no worker package at {path:?}: run `mix compile` first"
    );
    path.to_string_lossy().into_owned()
}

//! The member's durable state: term, vote, configs, in one JSON file,
//! replaced atomically (write, fsync, rename, fsync the directory).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use granary_cluster_core::Durable;

const FILE: &str = "cluster.json";

pub(crate) fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE)
}

/// The saved state, or `None` on first start.
pub(crate) fn load(data_dir: &Path) -> anyhow::Result<Option<Durable>> {
    let path = path(data_dir);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).with_context(|| {
            format!(
                "{} is damaged; restore it or remove it to rejoin as a new member",
                path.display()
            )
        }),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err).with_context(|| format!("cannot read {}", path.display())),
    }
}

pub(crate) fn save(data_dir: &Path, durable: &Durable) -> anyhow::Result<()> {
    let path = path(data_dir);
    let tmp = data_dir.join(format!("{FILE}.tmp"));
    let bytes = serde_json::to_vec_pretty(durable)?;
    let mut file =
        std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot replace {}", path.display()))?;
    if let Ok(dir) = std::fs::File::open(data_dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

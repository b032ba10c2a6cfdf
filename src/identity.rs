//! The node's identity: a UUID created at first start and kept in the data
//! directory, so a restarted node is the same node.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use uuid::Uuid;

const NODE_ID_FILE: &str = "node-id";

/// Reads the node id from `data_dir`, creating it (and the directory) on
/// first start.
pub fn load_or_create(data_dir: &Path) -> anyhow::Result<Uuid> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    let path = data_dir.join(NODE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => Uuid::parse_str(text.trim()).with_context(|| {
            format!(
                "{} does not hold a node id; delete it to make a new one",
                path.display()
            )
        }),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let id = Uuid::new_v4();
            let tmp = data_dir.join(format!("{NODE_ID_FILE}.tmp"));
            let mut file = std::fs::File::create(&tmp)
                .with_context(|| format!("cannot write {}", tmp.display()))?;
            writeln!(file, "{id}")?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok(id)
        }
        Err(err) => Err(err).with_context(|| format!("cannot read {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restarted_node_keeps_its_id() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path()).unwrap();
        assert_eq!(load_or_create(dir.path()).unwrap(), first);
    }

    #[test]
    fn a_corrupt_id_file_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(NODE_ID_FILE), "garbage").unwrap();
        let err = load_or_create(dir.path()).unwrap_err();
        assert!(format!("{err:#}").contains("node-id"), "{err:#}");
    }
}

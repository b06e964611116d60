//! What the agent remembers about a container across its own restarts: the generation it
//! runs, its restart count and how it last ended, one small JSON file per container under
//! `DATA_DIR/containers/`, replaced by rename so a crash leaves the old or the new record.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One container's record.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// The generation (fencing token) of the copy that runs here.
    pub generation: i64,
    /// How many times the agent restarted it.
    pub restarts: u32,
    /// How its process last ended (`Exited`, `OOMKilled`, `LivenessFailed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
}

/// Where the records of a data dir live.
#[derive(Debug, Clone)]
pub struct Records {
    dir: PathBuf,
}

impl Records {
    /// The records under `data_dir`.
    pub fn new(data_dir: &Path) -> Records {
        Records {
            dir: data_dir.join("containers"),
        }
    }

    /// The record of `name`, if one was saved and reads back.
    pub fn read(&self, name: &str) -> Option<Record> {
        serde_json::from_slice(&std::fs::read(self.path(name)).ok()?).ok()
    }

    /// Saves the record of `name`; a failure is logged (the container keeps running).
    pub fn write(&self, name: &str, record: &Record) {
        let path = self.path(name);
        let tmp = path.with_extension("tmp");
        let result = serde_json::to_vec(record)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|_| std::fs::rename(&tmp, &path));
        if let Err(e) = result {
            tracing::warn!(path = %path.display(), error = %e, "cannot save container record");
        }
    }

    /// Forgets the record of `name`.
    pub fn remove(&self, name: &str) {
        let _ = std::fs::remove_file(self.path(name));
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_survives_a_restart_and_goes_with_its_container() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("containers")).unwrap();
        let records = Records::new(dir.path());
        assert_eq!(records.read("app-0"), None);
        let record = Record {
            generation: 3,
            restarts: 2,
            last_exit: Some("OOMKilled".into()),
        };
        records.write("app-0", &record);
        assert_eq!(Records::new(dir.path()).read("app-0"), Some(record));
        records.remove("app-0");
        assert_eq!(records.read("app-0"), None);
    }
}

//! `texu image import|list`: root filesystem images in the controller's image store.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use serde_json::Value;

use crate::client::Client;
use crate::output;

/// `texu image ...`
#[derive(clap::Subcommand)]
pub enum Command {
    /// Store a root filesystem tarball (.tar, .tar.gz, .tar.xz, .tar.zst) as NAME:TAG for ARCH.
    Import {
        /// NAME:TAG, e.g. exchange:1.0
        image: String,
        /// The architecture of the binaries inside: amd64, arm64, armhf or armel.
        #[arg(long)]
        arch: String,
        /// The tarball.
        file: PathBuf,
    },
    /// List images and their architectures.
    List,
}

/// Runs `texu image`.
pub fn run(client: &Client, command: &Command) -> Result<ExitCode> {
    match command {
        Command::Import { image, arch, file } => {
            let Ok(texu_api::ImageRef::Stored { name, tag }) = texu_api::ImageRef::parse(image)
            else {
                bail!("{image:?}: expected NAME:TAG, e.g. exchange:1.0");
            };
            let arch: texu_api::Arch = arch.parse().map_err(|_| {
                anyhow::anyhow!("--arch {arch:?}: expected amd64, arm64, armhf or armel")
            })?;
            let name_ok = file.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                [".tar", ".tar.gz", ".tgz", ".tar.xz", ".tar.zst"]
                    .iter()
                    .any(|e| n.ends_with(e))
            });
            if !name_ok {
                bail!(
                    "{}: expected a .tar, .tar.gz, .tar.xz or .tar.zst file",
                    file.display()
                );
            }
            let v: Value = client.put_file(&format!("/v1/images/{name}/{tag}/{arch}"), file)?;
            println!(
                "image/{name}:{tag} {arch} imported: {} ({})",
                v["digest"].as_str().unwrap_or("-"),
                output::bytes(v["size"].as_u64().unwrap_or(0))
            );
        }
        Command::List => {
            let v: Value = client.get("/v1/images")?;
            let rows: Vec<Vec<String>> = v["items"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .flat_map(|image| {
                    let name = format!(
                        "{}:{}",
                        image["name"].as_str().unwrap_or("-"),
                        image["tag"].as_str().unwrap_or("-")
                    );
                    image["variants"]
                        .as_object()
                        .cloned()
                        .unwrap_or_default()
                        .into_iter()
                        .map(move |(arch, variant)| {
                            vec![
                                name.clone(),
                                arch,
                                variant["digest"]
                                    .as_str()
                                    .unwrap_or("-")
                                    .chars()
                                    .take(19)
                                    .collect(),
                                output::bytes(variant["size"].as_u64().unwrap_or(0)),
                            ]
                        })
                })
                .collect();
            print!(
                "{}",
                output::table(&["IMAGE", "ARCH", "DIGEST", "SIZE"], &rows)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

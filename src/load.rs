//! Reading manifests from files, directories and stdin, for `texu apply` and its kin.
//!
//! Every input is read (each under a size cap) and parsed before anything is returned, so one
//! run reports every problem of every file; any problem means nothing is returned to apply.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use texu_api::{parse_manifests_located, Diagnostic, Kind, Manifest, MAX_MANIFEST_BYTES};

/// How stdin is named in diagnostics.
const STDIN_NAME: &str = "<stdin>";

/// Reads the manifests in `paths`: files, directories (their `*.yaml` and `*.yml` files, not
/// recursively, in name order) and `-` for stdin. Returns each manifest with the file it came
/// from, or every problem found in every input.
pub fn load_paths(paths: &[PathBuf]) -> Result<Vec<(String, Manifest)>, Vec<Diagnostic>> {
    load_with_stdin(paths, &mut io::stdin().lock())
}

fn load_with_stdin(
    paths: &[PathBuf],
    stdin: &mut dyn Read,
) -> Result<Vec<(String, Manifest)>, Vec<Diagnostic>> {
    // Each input in order, read or not; problems are reported in the order of the inputs.
    let mut inputs: Vec<(String, Result<String, Diagnostic>)> = Vec::new();
    let mut stdin_used = false;
    for path in paths {
        if path.as_os_str() == "-" {
            let text = if stdin_used {
                Err(Diagnostic::whole_file(
                    STDIN_NAME,
                    "`-` (stdin) is given more than once",
                ))
            } else {
                read_capped(STDIN_NAME, stdin, None)
            };
            stdin_used = true;
            inputs.push((STDIN_NAME.to_string(), text));
        } else if path.is_dir() {
            match yaml_files_in(path) {
                Ok(files) => inputs.extend(files.iter().map(|f| (display(f), read_file(f)))),
                Err(d) => inputs.push((display(path), Err(d))),
            }
        } else {
            inputs.push((display(path), read_file(path)));
        }
    }

    let mut diagnostics = Vec::new();
    let mut manifests = Vec::new();
    let mut first_seen: HashMap<(Kind, String), String> = HashMap::new();
    for (file, text) in inputs {
        let text = match text {
            Ok(text) => text,
            Err(d) => {
                diagnostics.push(d);
                continue;
            }
        };
        match parse_manifests_located(&file, &text) {
            Err(found) => diagnostics.extend(found),
            Ok(located) => {
                for l in located {
                    let key = (l.manifest.kind(), l.manifest.name().to_string());
                    let here = format!("{file}:{}:{}", l.line, l.column);
                    if let Some(first) = first_seen.get(&key) {
                        diagnostics.push(Diagnostic {
                            file: file.clone(),
                            line: l.line,
                            column: l.column,
                            message: format!(
                                "{} {} is defined twice: first at {first}",
                                key.0, key.1
                            ),
                        });
                    } else {
                        first_seen.insert(key, here);
                    }
                    manifests.push((file.clone(), l.manifest));
                }
            }
        }
    }
    if diagnostics.is_empty() {
        Ok(manifests)
    } else {
        Err(diagnostics)
    }
}

fn display(path: &Path) -> String {
    path.display().to_string()
}

/// The `*.yaml` and `*.yml` files directly in `dir`, sorted by name.
fn yaml_files_in(dir: &Path) -> Result<Vec<PathBuf>, Diagnostic> {
    let cannot =
        |e: io::Error| Diagnostic::whole_file(display(dir), format!("cannot read directory: {e}"));
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(cannot)? {
        let path = entry.map_err(cannot)?.path();
        let is_yaml = path
            .extension()
            .is_some_and(|ext| ext == "yaml" || ext == "yml");
        if is_yaml && path.is_file() {
            files.push(path);
        }
    }
    if files.is_empty() {
        return Err(Diagnostic::whole_file(
            display(dir),
            "directory has no *.yaml or *.yml files",
        ));
    }
    files.sort();
    Ok(files)
}

fn read_file(path: &Path) -> Result<String, Diagnostic> {
    let name = display(path);
    let cannot = |e: io::Error| Diagnostic::whole_file(&name, format!("cannot read: {e}"));
    let file = fs::File::open(path).map_err(cannot)?;
    // Pipes and devices (`<(...)`, /dev/stdin) report 0 and are capped while reading instead.
    let size = file.metadata().map_err(cannot)?.len();
    if size > MAX_MANIFEST_BYTES as u64 {
        return Err(too_large(&name, Some(size)));
    }
    read_capped(&name, &mut &file, Some(size))
}

/// The diagnostic for an input over the limit; `size` when it is known.
fn too_large(name: &str, size: Option<u64>) -> Diagnostic {
    let size = size.map_or_else(
        || format!("more than {MAX_MANIFEST_BYTES}"),
        |s| s.to_string(),
    );
    Diagnostic {
        file: name.to_string(),
        line: 1,
        column: 1,
        message: format!(
            "is {size} bytes, over the limit of {MAX_MANIFEST_BYTES} bytes (1 MiB); \
             split it into several files"
        ),
    }
}

/// Reads at most the size limit (plus one byte, to notice more) as UTF-8 text.
fn read_capped(
    name: &str,
    reader: &mut dyn Read,
    size_hint: Option<u64>,
) -> Result<String, Diagnostic> {
    let capacity = size_hint.map_or(8192, |s| s.min(MAX_MANIFEST_BYTES as u64) as usize);
    let mut bytes = Vec::with_capacity(capacity);
    reader
        .take(MAX_MANIFEST_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Diagnostic::whole_file(name, format!("cannot read: {e}")))?;
    if bytes.len() > MAX_MANIFEST_BYTES {
        return Err(too_large(name, None));
    }
    String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
        let line_start = valid.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let column = String::from_utf8_lossy(&valid[line_start..])
            .chars()
            .count()
            + 1;
        Diagnostic {
            file: name.to_string(),
            line,
            column,
            message: "is not UTF-8 text".to_string(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    const ROLE: &str =
        "apiVersion: texu.io/v1\nkind: Role\nmetadata:\n  name: NAME\nspec:\n  image: host\n";

    fn role(name: &str) -> String {
        ROLE.replace("NAME", name)
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, text).expect("write test file");
        path
    }

    fn load(paths: &[PathBuf]) -> Result<Vec<(String, Manifest)>, Vec<Diagnostic>> {
        load_with_stdin(paths, &mut Cursor::new(role("from-stdin")))
    }

    fn names(loaded: &[(String, Manifest)]) -> Vec<&str> {
        loaded.iter().map(|(_, m)| m.name()).collect()
    }

    fn messages(result: Result<Vec<(String, Manifest)>, Vec<Diagnostic>>) -> Vec<String> {
        match result {
            Ok(m) => panic!("loaded {:?}", names(&m)),
            Err(d) => d.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn files_directories_and_stdin() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("stack");
        fs::create_dir(&dir).expect("mkdir");
        write(&dir, "b.yml", &role("b"));
        write(
            &dir,
            "a.yaml",
            &format!("{}---\n{}", role("a1"), role("a2")),
        );
        write(&dir, "notes.txt", "not a manifest");
        fs::create_dir(dir.join("nested.yaml")).expect("mkdir");
        write(&dir.join("nested.yaml"), "c.yaml", &role("nested"));
        let single = write(tmp.path(), "single.yaml", &role("single"));

        let loaded = load(&[single.clone(), dir.clone(), PathBuf::from("-")]).expect("loads");
        assert_eq!(names(&loaded), ["single", "a1", "a2", "b", "from-stdin"]);
        assert_eq!(loaded[0].0, single.display().to_string());
        assert_eq!(loaded[1].0, dir.join("a.yaml").display().to_string());
        assert_eq!(loaded[4].0, "<stdin>");
    }

    #[test]
    fn reports_problems_of_every_input() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let bad = write(tmp.path(), "bad.yaml", &role("Bad"));
        let worse = write(tmp.path(), "worse.yaml", "kind: [\n");
        let missing = tmp.path().join("missing.yaml");
        let empty_dir = tmp.path().join("empty");
        fs::create_dir(&empty_dir).expect("mkdir");
        let got = messages(load(&[
            bad.clone(),
            missing.clone(),
            worse.clone(),
            empty_dir.clone(),
        ]));
        assert_eq!(got.len(), 4, "{got:#?}");
        assert!(
            got[0].starts_with(&format!(
                "{}:4:9: metadata.name: must be lowercase",
                bad.display()
            )),
            "{got:?}"
        );
        assert!(
            got[1].starts_with(&format!("{}: cannot read: ", missing.display())),
            "{got:?}"
        );
        assert!(
            got[2].starts_with(&format!("{}:2:1: invalid YAML", worse.display())),
            "{got:?}"
        );
        assert!(
            got[3].starts_with(&format!("{}: directory has no", empty_dir.display())),
            "{got:?}"
        );
    }

    #[test]
    fn refuses_big_files_before_reading_them() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let big = tmp.path().join("big.yaml");
        let file = fs::File::create(&big).expect("create");
        file.set_len(10 << 20).expect("sparse 10 MiB");
        let got = messages(load(std::slice::from_ref(&big)));
        assert_eq!(
            got,
            [format!(
                "{}:1:1: is 10485760 bytes, over the limit of 1048576 bytes (1 MiB); split it into several files",
                big.display()
            )]
        );
        let mut endless = io::repeat(b'#');
        let got = load_with_stdin(&[PathBuf::from("-")], &mut endless).expect_err("too big");
        assert!(
            got[0]
                .to_string()
                .starts_with("<stdin>:1:1: is more than 1048576 bytes, over the limit"),
            "{}",
            got[0]
        );
    }

    #[test]
    fn points_at_bytes_that_are_not_utf8() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("latin1.yaml");
        fs::write(&path, b"kind: Role\nname: caf\xe9\n").expect("write");
        let got = messages(load(std::slice::from_ref(&path)));
        assert_eq!(got, [format!("{}:2:10: is not UTF-8 text", path.display())]);
    }

    #[test]
    fn duplicates_across_files_point_at_the_second() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let first = write(tmp.path(), "one.yaml", &role("app"));
        let second = write(
            tmp.path(),
            "two.yaml",
            &format!("{}---\n{}", role("db"), role("app")),
        );
        let got = messages(load(&[first.clone(), second.clone()]));
        assert_eq!(
            got,
            [format!(
                "{}:11:9: Role app is defined twice: first at {}:4:9",
                second.display(),
                first.display()
            )]
        );
        let got = messages(load(&[first.clone(), first.clone()]));
        assert_eq!(got.len(), 1, "{got:?}");
    }

    #[test]
    fn stdin_only_once() {
        let got = messages(load(&[PathBuf::from("-"), PathBuf::from("-")]));
        assert_eq!(got, ["<stdin>: `-` (stdin) is given more than once"]);
    }
}

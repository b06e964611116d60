//! The manifest corpus in `tests/manifests/`: every bad file fails with the diagnostic its
//! `.expect` sidecar names, every good file parses, and hostile input fails cleanly.

use std::fs;
use std::path::{Path, PathBuf};
use texu_api::{parse_manifests, Diagnostic, Manifest, PortRef, Protocol, Role};

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/manifests")
}

fn files(dir: &str, ext: &str) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(corpus().join(dir))
        .expect("corpus directory")
        .map(|e| {
            e.expect("directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n.ends_with(ext))
        .collect();
    names.sort();
    names
}

fn read(dir: &str, name: &str) -> String {
    fs::read_to_string(corpus().join(dir).join(name)).expect("corpus file")
}

/// An `.expect` sidecar: `LINE:COLUMN` on the first line, a substring on the second.
fn expectation(name: &str) -> (usize, usize, String) {
    let text = read("bad", &name.replace(".yaml", ".expect"));
    let mut lines = text.lines();
    let position = lines.next().expect("position line");
    let substring = lines.next().expect("substring line").to_string();
    let (line, column) = position.split_once(':').expect("LINE:COLUMN");
    (
        line.parse().expect("line number"),
        column.parse().expect("column number"),
        substring,
    )
}

fn parse_err(file: &str, text: &str) -> Vec<Diagnostic> {
    match parse_manifests(file, text) {
        Ok(m) => panic!("{file} parsed into {} manifests", m.len()),
        Err(diagnostics) => diagnostics,
    }
}

#[test]
fn every_bad_file_fails_where_its_expect_file_says() {
    let bad = files("bad", ".yaml");
    assert!(bad.len() >= 20, "only {} bad manifests", bad.len());
    let sidecars = files("bad", ".expect");
    let stems: Vec<String> = bad.iter().map(|n| n.replace(".yaml", ".expect")).collect();
    assert_eq!(
        sidecars, stems,
        "every bad manifest needs exactly one .expect file"
    );

    for name in &bad {
        let file = format!("bad/{name}");
        let diagnostics = parse_err(&file, &read("bad", name));
        assert!(!diagnostics.is_empty(), "{file}: no diagnostics");
        for d in &diagnostics {
            let rendered = d.to_string();
            let prefix = format!("{file}:{}:{}: ", d.line, d.column);
            assert!(
                d.line >= 1 && d.column >= 1,
                "{rendered}: position is 1-based"
            );
            assert!(
                rendered.starts_with(&prefix),
                "{rendered} does not start with {prefix}"
            );
            assert!(rendered.len() > prefix.len(), "{rendered}: empty message");
        }
        let (line, column, substring) = expectation(name);
        let first = &diagnostics[0];
        assert_eq!(
            (first.line, first.column),
            (line, column),
            "{file}: first diagnostic is {first}"
        );
        assert!(
            first.message.contains(&substring),
            "{file}: {first} does not contain {substring:?}"
        );
    }
}

fn role<'a>(manifests: &'a [Manifest], name: &str) -> &'a Role {
    manifests
        .iter()
        .map(|Manifest::Role(r)| r)
        .find(|r| r.metadata.name == name)
        .unwrap_or_else(|| panic!("no role {name}"))
}

#[test]
fn good_stack_parses() {
    let manifests = parse_manifests("good/stack.yaml", &read("good", "stack.yaml"))
        .unwrap_or_else(|d| panic!("{d:#?}"));
    let names: Vec<&str> = manifests.iter().map(Manifest::name).collect();
    assert_eq!(names, ["proxy", "app", "db"]);

    let proxy = role(&manifests, "proxy");
    assert_eq!(proxy.spec.image, "host");
    assert_eq!(proxy.spec.replicas, 1);
    assert_eq!(proxy.spec.ports[0].host_port, Some(8080));
    assert_eq!(proxy.spec.ports[0].protocol, Protocol::Tcp);
    assert_eq!(proxy.spec.files.len(), 1);
    assert!(proxy.spec.files[0].template.contains("BalancerMember"));
    assert_eq!(proxy.metadata.labels["tier"], "edge");

    let app = role(&manifests, "app");
    assert_eq!(app.spec.replicas, 3);
    assert_eq!(app.spec.env["WORKERS"], "2");
    let resources = &app.spec.resources;
    assert_eq!(
        resources.cpu.as_ref().map(|q| q.cpu_millis()),
        Some(Ok(500))
    );
    assert_eq!(
        resources.memory.as_ref().map(|q| q.bytes()),
        Some(Ok(128 << 20))
    );
    let readiness = app.spec.health.readiness.as_ref().expect("readiness probe");
    assert_eq!(readiness.period_seconds, 0.5);
    assert_eq!(readiness.failure_threshold, 2);
    assert_eq!(readiness.success_threshold, 1);
    let http = readiness.http.as_ref().expect("http probe");
    assert_eq!(http.port, PortRef::Name("http".into()));
    assert_eq!(http.port.resolve(&app.spec.ports), Some(8000));
    let liveness = app.spec.health.liveness.as_ref().expect("liveness probe");
    assert_eq!(
        liveness.tcp.as_ref().map(|t| &t.port),
        Some(&PortRef::Number(8000))
    );
    assert_eq!(app.spec.placement.max_per_node, Some(2));

    let db = role(&manifests, "db");
    assert!(db.spec.stateful);
    assert_eq!(db.spec.volumes[0].path, "/var/lib/db");
    assert_eq!(
        db.spec.resources.cpu.as_ref().map(|q| q.cpu_millis()),
        Some(Ok(1000))
    );
}

#[test]
fn changed_stack_differs_only_in_app_replicas() {
    let before = parse_manifests("good/stack.yaml", &read("good", "stack.yaml"))
        .unwrap_or_else(|d| panic!("{d:#?}"));
    let after = parse_manifests(
        "good/stack-changed.yaml",
        &read("good", "stack-changed.yaml"),
    )
    .unwrap_or_else(|d| panic!("{d:#?}"));
    assert_eq!(role(&after, "app").spec.replicas, 4);
    let mut expected = before.clone();
    if let Some(Manifest::Role(app)) = expected.get_mut(1) {
        app.spec.replicas = 4;
    }
    assert_eq!(after, expected);
}

#[test]
fn every_good_file_parses() {
    for name in files("good", ".yaml") {
        let file = format!("good/{name}");
        if let Err(d) = parse_manifests(&file, &read("good", &name)) {
            panic!("{file}: {d:#?}");
        }
    }
}

#[test]
fn ten_megabytes_is_refused_at_once() {
    let text = format!(
        "{}{}",
        read("good", "stack.yaml"),
        "# padding\n".repeat(1_000_000)
    );
    let d = parse_err("big.yaml", &text);
    assert_eq!(d.len(), 1);
    assert_eq!(
        d[0].to_string(),
        format!(
            "big.yaml:1:1: manifest is {} bytes, more than the limit of 1048576 bytes (1 MiB)",
            text.len()
        )
    );
}

#[test]
fn a_hundred_thousand_levels_of_nesting_fail_cleanly() {
    let cases = [
        "[".repeat(100_000),
        "{a: ".repeat(100_000),
        "- ".repeat(100_000),
        (0..100_000)
            .map(|i| format!("{}- \n", " ".repeat(i % 8)))
            .collect(),
    ];
    for text in cases {
        assert!(text.len() <= texu_api::MAX_MANIFEST_BYTES);
        let d = parse_err("deep.yaml", &text);
        assert!(!d.is_empty());
        assert!(d[0].line >= 1, "{}", d[0]);
    }
}

#[test]
fn billion_laughs_fail_cleanly() {
    let mut text = String::from("a: &a [lol,lol,lol,lol,lol,lol,lol,lol,lol]\n");
    for (prev, next) in "abcdefghi".chars().zip("bcdefghij".chars()) {
        let refs = vec![format!("*{prev}"); 9].join(",");
        text.push_str(&format!("{next}: &{next} [{refs}]\n"));
    }
    let d = parse_err("laughs.yaml", &text);
    assert_eq!(d.len(), 1, "{d:#?}");
    assert!(d[0].message.contains("alias bomb"), "{}", d[0]);
}

#[test]
fn a_manifest_near_the_limits_parses() {
    let mut text = read("good", "stack.yaml");
    text.push_str("---\napiVersion: texu.io/v1\nkind: Role\nmetadata:\n  name: big\nspec:\n  image: host\n  env:\n");
    let mut i = 0;
    while text.len() < texu_api::MAX_MANIFEST_BYTES - 100 {
        text.push_str(&format!("    VAR_{i}: value-{i}-padding-padding\n"));
        i += 1;
    }
    let manifests = parse_manifests("big.yaml", &text).unwrap_or_else(|d| panic!("{:?}", &d[..1]));
    assert_eq!(role(&manifests, "big").spec.env.len(), i);
}

/// Cheap deterministic fuzzing: mangled manifests never panic, and their diagnostics point
/// inside the text.
#[test]
fn mangled_manifests_never_panic() {
    let original = read("good", "stack.yaml");
    let junk = b"[]{}:-&*!\t\n \"'|>#%@?,x0";
    let mut seed: u64 = 0x5eed;
    let mut next = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) as usize
    };
    for _ in 0..1000 {
        let mut text = original.as_bytes().to_vec();
        for _ in 0..1 + next() % 4 {
            let at = next() % text.len();
            match next() % 3 {
                0 => text[at] = junk[next() % junk.len()],
                1 => text.insert(at, junk[next() % junk.len()]),
                _ => {
                    text.remove(at);
                }
            }
        }
        let Ok(text) = String::from_utf8(text) else {
            continue;
        };
        let lines = text.lines().count() + 1;
        if let Err(diagnostics) = parse_manifests("fuzz.yaml", &text) {
            for d in diagnostics {
                assert!(
                    d.line >= 1 && d.line <= lines && d.column >= 1,
                    "{d}\n{text}"
                );
            }
        }
    }
}

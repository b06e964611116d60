//! The stacks `texu demo` can run, built into the binary: `rastru` (the default: Apache
//! proxies, texu-exchange and a three-member Cassandra ring, manifests/demo/rastru/), `light`
//! (the exchange on one etcd member, manifests/demo/light/) and `web` (busybox responders,
//! manifests/demo/stack.yaml). Each says what it needs on this machine and, once ready, what
//! to try.

use std::path::Path;
use std::time::Duration;

use texu_api::{Container, ContainerPhase};

/// The demo's admin token of the exchange (manifests/demo/*/app.yaml): for this demo only.
pub const EXCHANGE_TOKEN: &str = "texu-admin-rastru-demo";
/// Where a `host` image finds the exchange (the containers see this machine's /usr).
pub const EXCHANGE_BIN: &str = "/usr/local/bin/texu-exchange";
const CASSANDRA_JARS: &str = "/usr/local/share/texu-cassandra/lib";
const CASSANDRA_BIN: &str = "/usr/local/bin/texu-cassandra";

/// A stack of `texu demo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Stack {
    /// Apache proxies, the exchange and a three-member Cassandra ring.
    Rastru,
    /// Apache proxies and the exchange on one etcd member.
    Light,
    /// Busybox HTTP responders (the quickest).
    Web,
}

impl Stack {
    /// Its manifests, as one YAML text.
    pub fn manifests(self) -> String {
        let docs: &[&str] = match self {
            Stack::Rastru => &[
                include_str!("../../manifests/demo/rastru/cassandra.yaml"),
                include_str!("../../manifests/demo/rastru/app.yaml"),
                include_str!("../../manifests/demo/rastru/proxy.yaml"),
            ],
            Stack::Light => &[
                include_str!("../../manifests/demo/light/etcd.yaml"),
                include_str!("../../manifests/demo/light/app.yaml"),
                include_str!("../../manifests/demo/rastru/proxy.yaml"),
            ],
            Stack::Web => &[include_str!("../../manifests/demo/stack.yaml")],
        };
        docs.join("\n---\n")
    }

    /// How long it may take to become ready.
    pub fn ready_timeout(self) -> Duration {
        match self {
            Stack::Rastru => Duration::from_secs(420),
            Stack::Light | Stack::Web => Duration::from_secs(120),
        }
    }

    /// What this machine lacks for the stack, with what to run; `None` when nothing.
    pub fn missing(self) -> Option<String> {
        self.missing_in(Path::new("/"))
    }

    fn missing_in(self, root: &Path) -> Option<String> {
        let has = |p: &str| root.join(p.trim_start_matches('/')).exists();
        let mut lacks = Vec::new();
        if self != Stack::Web && !has(EXCHANGE_BIN) {
            lacks.push(format!(
                "{EXCHANGE_BIN} (the exchange; containers on the host image see this machine's /usr): \
                 run `cargo build --release -p texu-exchange && sudo install -m 0755 \
                 target/release/texu-exchange {EXCHANGE_BIN}` (scripts/demo.sh does it)"
            ));
        }
        if self == Stack::Rastru {
            let java = ["/usr/bin/java", "/usr/lib/jvm"].iter().any(|p| has(p));
            let jars = root
                .join(CASSANDRA_JARS.trim_start_matches('/'))
                .read_dir()
                .is_ok_and(|mut d| d.next().is_some());
            if !java || !jars || !has(CASSANDRA_BIN) {
                lacks.push(format!(
                    "Java 17 and Apache Cassandra ({CASSANDRA_JARS}, {CASSANDRA_BIN}): run \
                     `sudo scripts/setup.sh` (Debian's openjdk-17-jre-headless, Cassandra's \
                     jars from Maven Central), or try `texu demo --stack light`"
                ));
            }
        }
        if self == Stack::Light && !has("/usr/bin/etcd") {
            lacks.push("etcd (/usr/bin/etcd): run `sudo apt-get install etcd-server`".into());
        }
        (!lacks.is_empty()).then(|| {
            format!(
                "texu demo --stack {} needs:\n  - {}",
                self.name(),
                lacks.join("\n  - ")
            )
        })
    }

    fn name(self) -> &'static str {
        match self {
            Stack::Rastru => "rastru",
            Stack::Light => "light",
            Stack::Web => "web",
        }
    }

    /// Whether it runs the exchange behind proxies.
    pub fn has_exchange(self) -> bool {
        self != Stack::Web
    }
}

/// Shell lines that create two members, two accounts and a transfer through the proxy at
/// `proxy` (`ADDRESS:PORT`) and read a statement; each `curl` line works as printed, in order.
pub fn exchange_lines(proxy: &str) -> Vec<String> {
    let auth = "-H \"Authorization: Bearer $TOKEN\"";
    let json = "-H 'Content-Type: application/json'";
    let id = "sed 's/.*\"id\":\"\\([^\"]*\\)\".*/\\1/'";
    vec![
        format!("TOKEN={EXCHANGE_TOKEN} P=http://{proxy}"),
        format!("A=$(curl -sf {auth} {json} -d '{{\"name\":\"Ana\"}}' $P/v1/members | {id})"),
        format!("B=$(curl -sf {auth} {json} -d '{{\"name\":\"Ben\"}}' $P/v1/members | {id})"),
        format!(
            "curl -sf {auth} {json} -d '{{\"member\":\"'$A'\",\"creditLimit\":-500,\"code\":\"ana\"}}' $P/v1/accounts"
        ),
        format!(
            "curl -sf {auth} {json} -d '{{\"member\":\"'$B'\",\"creditLimit\":-500,\"code\":\"ben\"}}' $P/v1/accounts"
        ),
        format!(
            "curl -sf {auth} {json} -d '{{\"payer\":\"ana\",\"payee\":\"ben\",\"amount\":120,\"description\":\"bread\"}}' $P/v1/transfers"
        ),
        format!("curl -sf {auth} $P/v1/accounts/ben/statement"),
        format!("curl -sf {auth} $P/v1/audit"),
    ]
}

/// `ADDRESS:PORT` of a Ready proxy container, for [`exchange_lines`].
pub fn proxy_address(containers: &[Container]) -> Option<String> {
    containers
        .iter()
        .filter(|c| c.spec.role == "proxy")
        .filter_map(|c| c.status.as_ref())
        .filter(|s| s.phase == ContainerPhase::Ready)
        .find_map(|s| s.address.as_deref().map(|a| format!("{a}:80")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stack_parses_and_names_what_it_lacks() {
        for stack in [Stack::Rastru, Stack::Light, Stack::Web] {
            let text = stack.manifests();
            let docs = texu_api::parse_manifests("stack.yaml", &text)
                .unwrap_or_else(|e| panic!("{stack:?}: {e:?}"));
            assert!(!docs.is_empty());
        }
        let empty = tempfile::tempdir().unwrap();
        let rastru = Stack::Rastru.missing_in(empty.path()).unwrap();
        assert!(
            rastru.contains("texu-exchange") && rastru.contains("scripts/setup.sh"),
            "{rastru}"
        );
        assert!(rastru.contains("--stack light"), "{rastru}");
        assert!(Stack::Light
            .missing_in(empty.path())
            .unwrap()
            .contains("etcd"));
        assert_eq!(Stack::Web.missing_in(empty.path()), None);
    }

    #[test]
    fn rastru_names_the_cassandra_install_until_java_the_jars_and_the_launcher_are_all_there() {
        let root = tempfile::tempdir().unwrap();
        let put = |p: &str| {
            let path = root.path().join(p.trim_start_matches('/'));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, "").unwrap();
        };
        put(EXCHANGE_BIN);
        put("/usr/bin/java");
        let lacks = Stack::Rastru.missing_in(root.path()).unwrap();
        assert!(
            lacks.contains("Apache Cassandra") && lacks.contains("`sudo scripts/setup.sh`"),
            "{lacks}"
        );
        assert!(!lacks.contains("texu-exchange (the exchange"), "{lacks}");
        put(&format!("{CASSANDRA_JARS}/cassandra-all-5.0.9.jar"));
        assert!(Stack::Rastru.missing_in(root.path()).is_some());
        put(CASSANDRA_BIN);
        assert_eq!(Stack::Rastru.missing_in(root.path()), None);
    }
}

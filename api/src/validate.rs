//! Validation of roles: every rule a stored role must satisfy, each failure naming its field.
//!
//! `Role::validate` reports all failures, not the first, so an operator fixes a manifest in one
//! round. A failure's `path` (`spec.ports[1].port`) is what [`crate::parse_manifests`] maps back
//! to a line and column.

use crate::image::ImageRefError;
use crate::names::{validate_env_key, validate_label_key, validate_label_value, validate_name};
use crate::role::{FileTemplate, Port, PortRef, Probe, Role};
use crate::{Kind, API_VERSION};
use std::collections::BTreeMap;

/// The most replicas a role may ask for.
pub const MAX_REPLICAS: i64 = 10_000;

/// The longest role name: `NAME-9999` (the largest ordinal) must fit in a 63-character label.
pub const MAX_ROLE_NAME: usize = 58;

/// One rule a field breaks: where, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct FieldError {
    /// The field, like `spec.ports[1].port` or `metadata.name`.
    pub path: String,
    /// Why it is refused.
    pub message: String,
}

impl FieldError {
    /// A failure of the field at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// The path of the entry `key` of the mapping at `parent`: `spec.env.HOME`, or
/// `metadata.labels[texu.io/zone]` for keys that are not plain words.
pub(crate) fn child(parent: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match (parent.is_empty(), plain) {
        (true, true) => key.to_string(),
        (false, true) => format!("{parent}.{key}"),
        (_, false) => format!("{parent}[{key}]"),
    }
}

/// The path of item `index` of the sequence at `parent`: `spec.ports[1]`.
pub(crate) fn item(parent: &str, index: usize) -> String {
    format!("{parent}[{index}]")
}

/// The path one level up: `spec.ports[1].port` -> `spec.ports[1]` -> `spec.ports` -> `spec` -> ``.
pub(crate) fn parent(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    let cut = if path.ends_with(']') {
        path.rfind('[')
    } else {
        path.rfind('.')
    };
    Some(cut.map_or("", |i| &path[..i]))
}

#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError::new(path, message));
    }

    fn check(&mut self, path: impl Into<String>, result: Result<(), String>) {
        if let Err(message) = result {
            self.add(path, message);
        }
    }
}

impl Role {
    /// Checks every rule; on failure, returns all broken rules.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Errors::default();
        if self.api_version != API_VERSION {
            errors.add(
                "apiVersion",
                format!("must be {API_VERSION}, got {:?}", self.api_version),
            );
        }
        if self.kind != Kind::Role.as_str() {
            errors.add("kind", format!("must be Role, got {:?}", self.kind));
        }
        match validate_name(&self.metadata.name) {
            Err(why) => errors.add("metadata.name", why),
            // Containers are named NAME-ORDINAL and must stay DNS labels too.
            Ok(()) if self.metadata.name.len() > MAX_ROLE_NAME => errors.add(
                "metadata.name",
                format!(
                    "a role name must be at most {MAX_ROLE_NAME} characters so that its container \
                     names (NAME-ORDINAL) stay within 63, got {}",
                    self.metadata.name.len()
                ),
            ),
            Ok(()) => {}
        }
        check_labels(&mut errors, "metadata.labels", &self.metadata.labels);
        self.validate_spec(&mut errors);
        if errors.0.is_empty() {
            Ok(())
        } else {
            Err(errors.0)
        }
    }

    fn validate_spec(&self, errors: &mut Errors) {
        let spec = &self.spec;
        if spec.replicas < 0 {
            errors.add(
                "spec.replicas",
                format!("must be 0 or more, got {}", spec.replicas),
            );
        } else if spec.replicas > MAX_REPLICAS {
            errors.add(
                "spec.replicas",
                format!("must be at most {MAX_REPLICAS}, got {}", spec.replicas),
            );
        }
        if let Err(e) = spec.image_ref() {
            let message = match e {
                ImageRefError::Empty => {
                    "must not be empty: expected `host`, `template:NAME` or `NAME:TAG`".to_string()
                }
                e => e.to_string(),
            };
            errors.add("spec.image", message);
        }
        check_command(errors, "spec.command", &spec.command, false);
        for (key, value) in &spec.env {
            let path = child("spec.env", key);
            if let Err(why) = validate_env_key(key) {
                errors.add(&path, format!("variable name {why}"));
            }
            if value.contains('\0') {
                errors.add(&path, "must not contain a NUL byte");
            }
        }
        if let Some(cpu) = &spec.resources.cpu {
            match cpu.cpu_millis() {
                Err(e) => errors.add("spec.resources.cpu", e.to_string()),
                Ok(0) => errors.add("spec.resources.cpu", "must be more than 0"),
                Ok(_) => {}
            }
        }
        if let Some(memory) = &spec.resources.memory {
            match memory.bytes() {
                Err(e) => errors.add("spec.resources.memory", e.to_string()),
                Ok(0) => errors.add("spec.resources.memory", "must be more than 0"),
                Ok(_) => {}
            }
        }
        check_ports(errors, &spec.ports);
        self.validate_volumes(errors);
        if let Some(probe) = &spec.health.readiness {
            check_probe(errors, "spec.health.readiness", probe, &spec.ports);
        }
        if let Some(probe) = &spec.health.liveness {
            check_probe(errors, "spec.health.liveness", probe, &spec.ports);
        }
        self.validate_placement(errors);
        check_files(errors, &spec.files);
        for (field, duration) in [
            ("lostAfter", &spec.disconnect.lost_after),
            ("stopOnNodeAfter", &spec.disconnect.stop_on_node_after),
        ] {
            if let Some(Err(e)) = duration.as_ref().map(|d| d.as_std()) {
                errors.add(format!("spec.disconnect.{field}"), e.to_string());
            }
        }
        if let Some(hook) = &spec.pre_stop {
            check_command(errors, "spec.preStop.command", &hook.command, true);
            match hook.timeout.as_ref().map(|d| d.as_std()) {
                Some(Err(e)) => errors.add("spec.preStop.timeout", e.to_string()),
                Some(Ok(d)) if d.is_zero() => {
                    errors.add("spec.preStop.timeout", "must be more than 0")
                }
                _ => {}
            }
        }
        if spec.max_unavailable < 1 {
            errors.add(
                "spec.maxUnavailable",
                format!(
                    "must be at least 1, got {} (0 would block every drain and update)",
                    spec.max_unavailable
                ),
            );
        }
    }

    fn validate_volumes(&self, errors: &mut Errors) {
        let spec = &self.spec;
        let mut names = BTreeMap::new();
        let mut paths = BTreeMap::new();
        for (i, volume) in spec.volumes.iter().enumerate() {
            let at = item("spec.volumes", i);
            errors.check(format!("{at}.name"), validate_name(&volume.name));
            if let Some(first) = names.insert(volume.name.as_str(), i) {
                errors.add(
                    format!("{at}.name"),
                    format!(
                        "duplicate volume name {:?}, also spec.volumes[{first}]",
                        volume.name
                    ),
                );
            }
            errors.check(format!("{at}.path"), check_container_path(&volume.path));
            if let Some(first) = paths.insert(volume.path.as_str(), i) {
                errors.add(
                    format!("{at}.path"),
                    format!(
                        "duplicate path {:?}, also spec.volumes[{first}]",
                        volume.path
                    ),
                );
            }
        }
        if spec.stateful && spec.volumes.is_empty() {
            errors.add(
                "spec.stateful",
                "a stateful role needs at least one volume in spec.volumes",
            );
        }
    }

    fn validate_placement(&self, errors: &mut Errors) {
        let placement = &self.spec.placement;
        check_labels(
            errors,
            "spec.placement.nodeSelector",
            &placement.node_selector,
        );
        if let Some(spread) = &placement.spread {
            if spread != "node" {
                if let Err(why) = validate_label_key(spread) {
                    errors.add(
                        "spec.placement.spread",
                        format!("must be `node` or a node label key, and as a label key it {why}"),
                    );
                }
            }
        }
        if let Some(max) = placement.max_per_node {
            if max < 1 {
                errors.add(
                    "spec.placement.maxPerNode",
                    format!("must be at least 1, got {max}"),
                );
            }
        }
    }
}

fn check_labels(errors: &mut Errors, at: &str, labels: &BTreeMap<String, String>) {
    for (key, value) in labels {
        let path = child(at, key);
        if let Err(why) = validate_label_key(key) {
            errors.add(&path, format!("label key {why}"));
        }
        if let Err(why) = validate_label_value(value) {
            errors.add(&path, format!("label value {why}"));
        }
    }
}

/// An argument vector: no NUL bytes, and a program name when `required` or when given.
fn check_command(errors: &mut Errors, at: &str, command: &[String], required: bool) {
    if command.is_empty() {
        if required {
            errors.add(at, "must not be empty");
        }
        return;
    }
    if command[0].is_empty() {
        errors.add(item(at, 0), "the program name must not be empty");
    }
    for (i, arg) in command.iter().enumerate() {
        if arg.contains('\0') {
            errors.add(item(at, i), "must not contain a NUL byte");
        }
    }
}

fn check_port_number(n: i64) -> Result<(), String> {
    if (1..=65535).contains(&n) {
        Ok(())
    } else {
        Err(format!("must be between 1 and 65535, got {n}"))
    }
}

fn check_ports(errors: &mut Errors, ports: &[Port]) {
    let mut names = BTreeMap::new();
    let mut numbers = BTreeMap::new();
    let mut host_numbers = BTreeMap::new();
    for (i, port) in ports.iter().enumerate() {
        let at = item("spec.ports", i);
        errors.check(format!("{at}.name"), validate_name(&port.name));
        if let Some(first) = names.insert(port.name.as_str(), i) {
            errors.add(
                format!("{at}.name"),
                format!(
                    "duplicate port name {:?}, also spec.ports[{first}]",
                    port.name
                ),
            );
        }
        errors.check(format!("{at}.port"), check_port_number(port.port));
        if let Some(first) = numbers.insert((port.port, port.protocol), i) {
            errors.add(
                format!("{at}.port"),
                format!(
                    "duplicate port {}/{}, also spec.ports[{first}]",
                    port.port, port.protocol
                ),
            );
        }
        if let Some(host_port) = port.host_port {
            errors.check(format!("{at}.hostPort"), check_port_number(host_port));
            if let Some(first) = host_numbers.insert((host_port, port.protocol), i) {
                errors.add(
                    format!("{at}.hostPort"),
                    format!(
                        "duplicate hostPort {host_port}/{}, also spec.ports[{first}]",
                        port.protocol
                    ),
                );
            }
        }
    }
}

fn check_probe(errors: &mut Errors, at: &str, probe: &Probe, ports: &[Port]) {
    let mut actions = Vec::new();
    if let Some(http) = &probe.http {
        actions.push("http");
        if !http.path.starts_with('/') {
            errors.add(
                format!("{at}.http.path"),
                format!("must start with '/', got {:?}", http.path),
            );
        }
        check_port_ref(errors, &format!("{at}.http.port"), &http.port, ports);
    }
    if let Some(tcp) = &probe.tcp {
        actions.push("tcp");
        check_port_ref(errors, &format!("{at}.tcp.port"), &tcp.port, ports);
    }
    if let Some(exec) = &probe.exec {
        actions.push("exec");
        check_command(errors, &format!("{at}.exec.command"), &exec.command, true);
    }
    match actions.len() {
        0 => errors.add(at, "needs one of http, tcp or exec"),
        1 => {}
        _ => errors.add(
            at,
            format!(
                "must have exactly one of http, tcp or exec, found {}",
                actions.join(" and ")
            ),
        ),
    }
    for (field, value) in [
        ("periodSeconds", probe.period_seconds),
        ("timeoutSeconds", probe.timeout_seconds),
    ] {
        if !(value.is_finite() && value > 0.0) {
            errors.add(
                format!("{at}.{field}"),
                format!("must be more than 0, got {value}"),
            );
        }
    }
    if !(probe.initial_delay_seconds.is_finite() && probe.initial_delay_seconds >= 0.0) {
        errors.add(
            format!("{at}.initialDelaySeconds"),
            format!("must be 0 or more, got {}", probe.initial_delay_seconds),
        );
    }
    for (field, value) in [
        ("failureThreshold", probe.failure_threshold),
        ("successThreshold", probe.success_threshold),
    ] {
        if value < 1 {
            errors.add(
                format!("{at}.{field}"),
                format!("must be at least 1, got {value}"),
            );
        }
    }
}

fn check_port_ref(errors: &mut Errors, at: &str, port: &PortRef, ports: &[Port]) {
    match port {
        PortRef::Number(n) => errors.check(at, check_port_number(*n)),
        PortRef::Name(name) => {
            if !ports.iter().any(|p| &p.name == name) {
                let known: Vec<&str> = ports.iter().map(|p| p.name.as_str()).collect();
                let known = if known.is_empty() {
                    "the role has no ports".to_string()
                } else {
                    format!("the role's ports are {}", known.join(", "))
                };
                errors.add(
                    at,
                    format!("names port {name:?}, which is not in spec.ports ({known})"),
                );
            }
        }
    }
}

fn check_files(errors: &mut Errors, files: &[FileTemplate]) {
    let mut paths = BTreeMap::new();
    for (i, file) in files.iter().enumerate() {
        let at = item("spec.files", i);
        errors.check(format!("{at}.path"), check_container_path(&file.path));
        if let Some(first) = paths.insert(file.path.as_str(), i) {
            errors.add(
                format!("{at}.path"),
                format!("duplicate path {:?}, also spec.files[{first}]", file.path),
            );
        }
        check_command(errors, &format!("{at}.check"), &file.check, false);
        check_command(errors, &format!("{at}.reload"), &file.reload, false);
        for (field, duration) in [
            ("quietPeriod", &file.quiet_period),
            ("maxWait", &file.max_wait),
        ] {
            if let Some(Err(e)) = duration.as_ref().map(|d| d.as_std()) {
                errors.add(format!("{at}.{field}"), e.to_string());
            }
        }
    }
}

/// An absolute path inside a container that cannot climb out of it.
fn check_container_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("must be an absolute path, got {path:?}"));
    }
    if path.split('/').any(|part| part == "..") {
        return Err(format!("must not contain '..', got {path:?}"));
    }
    if path.contains('\0') {
        return Err("must not contain a NUL byte".into());
    }
    if path.split('/').all(|part| part.is_empty() || part == ".") {
        return Err("must not be the root directory".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests;

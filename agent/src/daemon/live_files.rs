//! Live templates: a running container's files re-rendered when what they read changes
//! (endpoints), debounced, installed in place, checked inside the container, and reloaded once
//! per batch.
//!
//! - A change starts a batch; the batch is installed once no further change came for the
//!   quiet period, or once it has waited the maximum (the shortest of its files' settings).
//! - Installing writes each changed file over the one in use, in place: the container sees it
//!   through a bind mount of that very inode (a rename would leave it reading the old text).
//! - The `check` commands of the changed files run inside the container; if one fails, every
//!   file of the batch gets its previous text back, nothing is reloaded, and that text is not
//!   tried again until the render changes. A render that fails changes nothing either.
//! - Then their `reload` commands run once; a failed reload is retried with a doubling backoff.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use texu_api::{FileStatus, FileTemplate};
use tokio::time::Instant;

use super::spec::error_chain;
use crate::files::{self, FileContext, RenderedFile};
use crate::runtime::Runtime;

/// Default quiet period after a change.
pub const QUIET: Duration = Duration::from_millis(250);
/// Default longest wait for a quiet period.
pub const MAX_WAIT: Duration = Duration::from_secs(2);
/// First delay before a failed reload is tried again; it doubles up to [`RELOAD_RETRY_MAX`].
pub const RELOAD_RETRY: Duration = Duration::from_secs(1);
/// Longest delay between reload attempts.
pub const RELOAD_RETRY_MAX: Duration = Duration::from_secs(30);

/// What one container's live files are doing.
#[derive(Debug, Default)]
pub struct LiveFiles {
    /// Path -> the text in use (read from the board when first needed).
    pub in_use: Option<BTreeMap<String, String>>,
    /// The batch waiting for its quiet period: the rendered files that differ, when it began
    /// and when it last changed.
    pending: Option<(Vec<RenderedFile>, Instant, Instant)>,
    /// Texts a check refused, not tried again until the render changes.
    rejected: BTreeMap<String, String>,
    /// The reload still to run, if any.
    pub reload: Option<PendingReload>,
    /// Per path: times, reloads and the last failure, for the status.
    pub files: BTreeMap<String, FileState>,
}

/// Reload commands still to run after an install.
#[derive(Debug, Clone)]
pub struct PendingReload {
    /// The distinct `reload` commands of the installed files, in order.
    pub commands: Vec<Vec<String>>,
    /// The files they reload for.
    pub paths: Vec<String>,
    /// The next attempt.
    pub at: Instant,
    /// Failures so far.
    pub failures: u32,
}

/// Which step of a live file failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Render,
    Check,
    Reload,
}

/// One live file's history, for `texu describe container`.
#[derive(Debug, Clone, Default)]
pub struct FileState {
    /// When the text in use was installed (or last written, for text found on the board).
    pub installed_at: Option<std::time::SystemTime>,
    /// When the program last reloaded for this file.
    pub reloaded_at: Option<std::time::SystemTime>,
    /// Reloads for this file.
    pub reloads: u64,
    /// The last failure and its step.
    pub error: Option<(Step, String)>,
}

/// The batch's quiet period and maximum wait: the shortest among `files`' settings.
fn timing(templates: &[FileTemplate], batch: &[RenderedFile]) -> (Duration, Duration) {
    let of = |d: &Option<texu_api::Duration>, default: Duration| {
        d.as_ref().and_then(|d| d.as_std().ok()).unwrap_or(default)
    };
    let mut quiet = QUIET;
    let mut max = MAX_WAIT;
    let mut first = true;
    for t in templates
        .iter()
        .filter(|t| batch.iter().any(|f| f.path == t.path))
    {
        let (q, m) = (of(&t.quiet_period, QUIET), of(&t.max_wait, MAX_WAIT));
        (quiet, max) = if first {
            (q, m)
        } else {
            (quiet.min(q), max.min(m))
        };
        first = false;
    }
    (quiet, max)
}

impl LiveFiles {
    /// Takes the latest render at `now`; returns the batch to install when it is due.
    pub fn offer(
        &mut self,
        templates: &[FileTemplate],
        rendered: Vec<RenderedFile>,
        now: Instant,
    ) -> Option<Vec<RenderedFile>> {
        let in_use = self.in_use.get_or_insert_with(BTreeMap::new);
        let changed: Vec<RenderedFile> = rendered
            .into_iter()
            .filter(|f| in_use.get(&f.path) != Some(&f.text))
            .collect();
        self.rejected
            .retain(|path, text| changed.iter().any(|f| &f.path == path && &f.text == text));
        let changed: Vec<RenderedFile> = changed
            .into_iter()
            .filter(|f| self.rejected.get(&f.path) != Some(&f.text))
            .collect();
        if changed.is_empty() {
            self.pending = None;
            return None;
        }
        let (began, last) = match self.pending.take() {
            Some((batch, began, last)) if batch == changed => (began, last),
            Some((_, began, _)) => (began, now),
            None => (now, now),
        };
        let (quiet, max) = timing(templates, &changed);
        if now.duration_since(last) >= quiet || now.duration_since(began) >= max {
            return Some(changed);
        }
        self.pending = Some((changed, began, last));
        None
    }

    /// The batch passed its checks and is in use; its reload commands are due at `now`.
    pub fn installed(&mut self, batch: &[RenderedFile], templates: &[FileTemplate], now: Instant) {
        let in_use = self.in_use.get_or_insert_with(BTreeMap::new);
        let (mut commands, mut paths) = self
            .reload
            .take()
            .map(|r| (r.commands, r.paths))
            .unwrap_or_default();
        let at = std::time::SystemTime::now();
        for f in batch {
            in_use.insert(f.path.clone(), f.text.clone());
            let state = self.files.entry(f.path.clone()).or_default();
            state.installed_at = Some(at);
            state.error = None;
            if let Some(t) = templates.iter().find(|t| t.path == f.path) {
                if !t.reload.is_empty() {
                    if !commands.contains(&t.reload) {
                        commands.push(t.reload.clone());
                    }
                    if !paths.contains(&f.path) {
                        paths.push(f.path.clone());
                    }
                }
            }
        }
        if !commands.is_empty() {
            self.reload = Some(PendingReload {
                commands,
                paths,
                at: now,
                failures: 0,
            });
        }
    }

    /// Records `error` of `step` for each of `paths`.
    pub fn failed<'a>(
        &mut self,
        paths: impl IntoIterator<Item = &'a str>,
        step: Step,
        error: &str,
    ) {
        for path in paths {
            self.files.entry(path.to_string()).or_default().error = Some((step, error.to_string()));
        }
    }

    /// A render succeeded: files whose text in use is what they render to, with no reload
    /// still due, have nothing left failing.
    fn rendered(&mut self, rendered: &[RenderedFile]) {
        let in_use = self.in_use.get_or_insert_with(BTreeMap::new);
        let reloading = self
            .reload
            .as_ref()
            .map(|r| r.paths.clone())
            .unwrap_or_default();
        for f in rendered {
            if in_use.get(&f.path) == Some(&f.text) && !reloading.contains(&f.path) {
                if let Some(state) = self.files.get_mut(&f.path) {
                    state.error = None;
                }
            }
        }
    }

    /// The first failure still standing, for the container's status message.
    pub fn message(&self) -> Option<String> {
        self.files
            .values()
            .find_map(|f| f.error.as_ref().map(|(_, e)| e.clone()))
    }

    /// Per file of `templates`: hash of the text in use, times, reloads and last error.
    pub fn status(&self, templates: &[FileTemplate]) -> Vec<FileStatus> {
        templates
            .iter()
            .map(|t| {
                let state = self.files.get(&t.path).cloned().unwrap_or_default();
                let text = self.in_use.as_ref().and_then(|u| u.get(&t.path));
                FileStatus {
                    path: t.path.clone(),
                    hash: text.map(|t| short_hash(t)),
                    rendered_at: state.installed_at.map(texu_api::system_time_rfc3339),
                    reloaded_at: state.reloaded_at.map(texu_api::system_time_rfc3339),
                    reloads: state.reloads,
                    last_error: state.error.map(|(_, e)| e),
                }
            })
            .collect()
    }

    /// A check refused the batch: its texts are not tried again until the render changes.
    pub fn refused(&mut self, batch: &[RenderedFile], error: String) {
        for f in batch {
            self.rejected.insert(f.path.clone(), f.text.clone());
        }
        self.failed(batch.iter().map(|f| f.path.as_str()), Step::Check, &error);
    }

    /// The reload commands due at `now`, if any.
    pub fn reload_due(&self, now: Instant) -> Option<Vec<Vec<String>>> {
        self.reload
            .as_ref()
            .filter(|r| now >= r.at)
            .map(|r| r.commands.clone())
    }

    /// The reload ran: done, or tried again after a doubling delay.
    pub fn reloaded(&mut self, result: Result<(), String>, now: Instant) {
        let Some(mut reload) = self.reload.take() else {
            return;
        };
        match result {
            Ok(()) => {
                let at = std::time::SystemTime::now();
                for path in &reload.paths {
                    let state = self.files.entry(path.clone()).or_default();
                    state.reloads += 1;
                    state.reloaded_at = Some(at);
                    state.error = None;
                }
            }
            Err(e) => {
                reload.failures += 1;
                let factor = 2u32.saturating_pow(reload.failures - 1);
                reload.at = now + RELOAD_RETRY.saturating_mul(factor).min(RELOAD_RETRY_MAX);
                let paths = reload.paths.clone();
                self.reload = Some(reload);
                self.failed(paths.iter().map(String::as_str), Step::Reload, &e);
            }
        }
    }
}

/// The first 16 hex digits of the SHA-256 of `text`.
pub fn short_hash(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Reads the texts in use for `templates` from the container's files directory.
pub fn read_in_use(dir: &Path, templates: &[FileTemplate]) -> BTreeMap<String, String> {
    templates
        .iter()
        .filter_map(|t| {
            let text = std::fs::read_to_string(host_path(dir, &t.path)).ok()?;
            Some((t.path.clone(), text))
        })
        .collect()
}

/// Where the board keeps the file the container sees at `path`.
pub fn host_path(dir: &Path, path: &str) -> PathBuf {
    dir.join(path.trim_start_matches('/'))
}

/// Writes `text` over the file at `path` in place: same inode, so a bind mount of it shows
/// the new text.
pub fn write_in_place(path: &Path, text: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_data()
}

/// How long a check or reload command may run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a check or reload command failed, said for the status.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CommandFailed {
    /// It ran and exited non-zero: its verdict.
    Refused(String),
    /// It could not run (the container stopped, attach failed): no verdict on the text.
    NotRun(String),
}

impl CommandFailed {
    fn text(self) -> String {
        match self {
            CommandFailed::Refused(t) | CommandFailed::NotRun(t) => t,
        }
    }
}

/// Runs `argv` inside container `name`; an error says what failed, for the status.
async fn run(
    runtime: &dyn Runtime,
    name: &str,
    what: &str,
    argv: &[String],
) -> Result<(), CommandFailed> {
    match runtime.exec(name, argv, COMMAND_TIMEOUT).await {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let stdout = String::from_utf8_lossy(&out.stdout);
            let said = if stderr.trim().is_empty() {
                stdout
            } else {
                stderr
            };
            Err(CommandFailed::Refused(format!(
                "{what} {:?} failed ({}): {}",
                argv.join(" "),
                out.status,
                said.trim()
            )))
        }
        Err(e) => Err(CommandFailed::NotRun(format!(
            "{what} {:?} could not run: {e}",
            argv.join(" ")
        ))),
    }
}

/// One pass over a running container's live files: renders them with `ctx`, installs a due
/// batch (checked, or put back), and runs a due reload. Failures end in `live.files` (per path) and `live.message()`.
pub async fn refresh(
    runtime: &dyn Runtime,
    name: &str,
    templates: &[FileTemplate],
    ctx: &FileContext,
    dir: &Path,
    live: &mut LiveFiles,
) {
    let now = Instant::now();
    if live.in_use.is_none() {
        live.in_use = Some(read_in_use(dir, templates));
        for t in templates {
            let written = std::fs::metadata(host_path(dir, &t.path)).and_then(|m| m.modified());
            if let Ok(at) = written {
                live.files.entry(t.path.clone()).or_default().installed_at = Some(at);
            }
        }
    }
    match files::render(templates, ctx) {
        Err(e) => {
            let error = format!("{}; the previous text stays in use", error_chain(&e));
            if live.message().as_ref() != Some(&error) {
                tracing::warn!(container = %name, %error, "template does not render");
                crate::metrics::file_step("render", false);
            }
            match e.path() {
                Some(path) => live.failed([path], Step::Render, &error),
                None => live.failed(
                    templates.iter().map(|t| t.path.as_str()),
                    Step::Render,
                    &error,
                ),
            }
        }
        Ok(rendered) => {
            live.rendered(&rendered);
            if let Some(batch) = live.offer(templates, rendered, now) {
                crate::metrics::file_step("render", true);
                install(runtime, name, templates, dir, live, batch).await;
            }
        }
    }
    if let Some(commands) = live.reload_due(now) {
        let mut result = Ok(());
        for argv in &commands {
            result = run(runtime, name, "reload", argv)
                .await
                .map_err(CommandFailed::text);
            if result.is_err() {
                break;
            }
        }
        crate::metrics::file_step("reload", result.is_ok());
        match &result {
            Ok(()) => tracing::info!(container = %name, "reloaded after a file change"),
            Err(e) => tracing::warn!(container = %name, error = %e, "reload failed; retrying"),
        }
        live.reloaded(result, Instant::now());
    }
}

/// Installs `batch` in place and checks it; on a failed check puts the previous text back.
async fn install(
    runtime: &dyn Runtime,
    name: &str,
    templates: &[FileTemplate],
    dir: &Path,
    live: &mut LiveFiles,
    batch: Vec<RenderedFile>,
) {
    let previous: Vec<(PathBuf, Option<String>)> = batch
        .iter()
        .map(|f| {
            let old = live.in_use.as_ref().and_then(|u| u.get(&f.path)).cloned();
            (host_path(dir, &f.path), old)
        })
        .collect();
    let mut failed: Option<CommandFailed> = None;
    for f in &batch {
        let path = host_path(dir, &f.path);
        if let Err(e) = write_in_place(&path, &f.text) {
            failed = Some(CommandFailed::NotRun(format!(
                "cannot write {} in place: {e}",
                f.path
            )));
            break;
        }
    }
    let mut checks: Vec<(&str, &[String])> = Vec::new();
    for t in templates
        .iter()
        .filter(|t| batch.iter().any(|f| f.path == t.path))
    {
        if !t.check.is_empty() && !checks.iter().any(|(_, c)| *c == t.check.as_slice()) {
            checks.push((t.path.as_str(), t.check.as_slice()));
        }
    }
    if failed.is_none() {
        for (path, argv) in checks {
            if let Err(e) = run(runtime, name, &format!("check of {path}:"), argv).await {
                crate::metrics::file_step("check", false);
                failed = Some(e);
                break;
            }
            crate::metrics::file_step("check", true);
        }
    }
    match failed {
        None => {
            tracing::info!(container = %name, files = batch.len(), "new file text installed");
            live.installed(&batch, templates, Instant::now());
        }
        Some(error) => {
            for (path, old) in previous {
                if let Some(old) = old {
                    if let Err(e) = write_in_place(&path, &old) {
                        tracing::warn!(container = %name, path = %path.display(), error = %e, "cannot put the previous text back");
                    }
                }
            }
            match error {
                CommandFailed::Refused(error) => {
                    let error = format!("{error}; the previous text stays in use");
                    tracing::warn!(container = %name, %error, "new file text refused");
                    live.refused(&batch, error);
                }
                // Tried again with the next render: nothing said the text is wrong.
                CommandFailed::NotRun(error) => {
                    let error = format!("{error}; the previous text stays in use");
                    tracing::warn!(container = %name, %error, "new file text not checked");
                    live.failed(batch.iter().map(|f| f.path.as_str()), Step::Check, &error);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    fn template(path: &str, reload: &[&str]) -> FileTemplate {
        FileTemplate {
            path: path.into(),
            template: String::new(),
            reload: reload.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn file(path: &str, text: &str) -> RenderedFile {
        RenderedFile {
            path: path.into(),
            text: text.into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_changes_is_one_batch_after_the_quiet_period_or_the_max_wait() {
        let templates = [template("/run/a.conf", &["reload"])];
        let mut live = LiveFiles {
            in_use: Some(BTreeMap::from([("/run/a.conf".into(), "v0".into())])),
            ..Default::default()
        };
        // Ten changes 100 ms apart: never quiet for 250 ms, so the 2 s maximum ends the wait.
        let mut installed = Vec::new();
        for i in 1..=30 {
            let text = format!("v{}", i.min(10));
            if let Some(batch) =
                live.offer(&templates, vec![file("/run/a.conf", &text)], Instant::now())
            {
                installed.push((i, batch[0].text.clone()));
                live.installed(&batch, &templates, Instant::now());
            }
            advance(Duration::from_millis(100)).await;
        }
        // The last change (v10, at step 10) is quiet by step 13.
        assert_eq!(installed, [(13, "v10".to_string())]);
        assert_eq!(
            live.reload_due(Instant::now()),
            Some(vec![vec!["reload".to_string()]])
        );

        let mut busy = LiveFiles {
            in_use: Some(BTreeMap::new()),
            ..Default::default()
        };
        let mut at = None;
        for i in 0..40 {
            let text = format!("v{i}");
            if busy
                .offer(&templates, vec![file("/run/a.conf", &text)], Instant::now())
                .is_some()
            {
                at = Some(i);
                break;
            }
            advance(Duration::from_millis(100)).await;
        }
        assert_eq!(at, Some(20), "a change every 100 ms waits the 2 s maximum");
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_text_is_not_tried_again_and_a_failed_reload_backs_off() {
        let templates = [template("/run/a.conf", &["reload"])];
        let mut live = LiveFiles {
            in_use: Some(BTreeMap::from([("/run/a.conf".into(), "good".into())])),
            ..Default::default()
        };
        let bad = || vec![file("/run/a.conf", "bad")];
        assert_eq!(live.offer(&templates, bad(), Instant::now()), None);
        advance(QUIET).await;
        let batch = live.offer(&templates, bad(), Instant::now()).unwrap();
        live.refused(&batch, "check failed".into());
        advance(QUIET).await;
        assert_eq!(live.offer(&templates, bad(), Instant::now()), None);
        assert_eq!(live.message().as_deref(), Some("check failed"));
        assert_eq!(
            live.status(&templates)[0].last_error.as_deref(),
            Some("check failed")
        );

        // A corrected render goes through; its reload fails twice, 1 s then 2 s apart.
        let fixed = vec![file("/run/a.conf", "fixed")];
        live.offer(&templates, fixed.clone(), Instant::now());
        advance(QUIET).await;
        let batch = live.offer(&templates, fixed, Instant::now()).unwrap();
        live.installed(&batch, &templates, Instant::now());
        assert!(live.reload_due(Instant::now()).is_some());
        live.reloaded(Err("exit 1".into()), Instant::now());
        assert!(live.reload_due(Instant::now()).is_none());
        advance(RELOAD_RETRY).await;
        assert!(live.reload_due(Instant::now()).is_some());
        live.reloaded(Err("exit 1".into()), Instant::now());
        advance(RELOAD_RETRY).await;
        assert!(live.reload_due(Instant::now()).is_none());
        advance(RELOAD_RETRY).await;
        live.reloaded(Ok(()), Instant::now());
        let status = &live.status(&templates)[0];
        assert_eq!((status.reloads, live.message()), (1, None));
        assert_eq!(status.hash.as_deref(), Some(short_hash("fixed").as_str()));
        assert!(status.reloaded_at.is_some() && status.last_error.is_none());
    }

    #[test]
    fn writing_in_place_keeps_the_inode() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = host_path(dir.path(), "/run/a.conf");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "old text that is longer").unwrap();
        let inode = std::fs::metadata(&path).unwrap().ino();
        write_in_place(&path, "new").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), inode);
    }
}

//! CI-native log output: which CI system runs us, and the markers that fold a block of log
//! lines into a collapsible section there; plus the GitHub Actions job summary file.
//!
//! Detection uses the variables each system documents as always set in a job:
//! `GITHUB_ACTIONS=true` (GitHub Actions, "Default environment variables") and `GITLAB_CI=true`
//! (GitLab CI/CD, "Predefined CI/CD variables"). When both are set, GitHub Actions wins.
//!
//! Markers, as the systems document them:
//! - GitHub Actions: `::group::TITLE` … `::endgroup::` on lines of their own. Groups do not
//!   nest. The title is command data, so `%`, CR and LF are escaped as `%25`, `%0D`, `%0A`.
//! - GitLab: `ESC[0Ksection_start:UNIX_SECONDS:NAME[collapsed=true]\rESC[0KHEADER` …
//!   `ESC[0Ksection_end:UNIX_SECONDS:NAME\rESC[0K`. NAME may only use `A-Z a-z 0-9 _ . -`
//!   (GitLab's `logs_section_prefix_regex`), so other characters become `_`; the timestamps
//!   give the duration GitLab shows beside the header.
//!
//! This module only builds strings and appends to the summary file; the printer decides when.

use std::io::Write;
use std::path::Path;

/// A CI system whose log viewer folds sections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CiSystem {
    GitHubActions,
    GitLab,
}

impl CiSystem {
    /// The system this process runs in, from its documented variables (values compared
    /// exactly with `true`, as the systems set them).
    pub fn detect(env: impl Fn(&str) -> Option<String>) -> Option<CiSystem> {
        let is_true = |k: &str| env(k).is_some_and(|v| v == "true");
        if is_true("GITHUB_ACTIONS") {
            Some(CiSystem::GitHubActions)
        } else if is_true("GITLAB_CI") {
            Some(CiSystem::GitLab)
        } else {
            None
        }
    }

    /// The line(s) that open a section. `id` must be unique in the job (GitLab pairs start and
    /// end by it); `started_unix` is when the work in the section began; `collapsed` asks
    /// GitLab to show it folded (GitHub always does).
    pub fn start(self, id: &str, title: &str, started_unix: u64, collapsed: bool) -> String {
        match self {
            CiSystem::GitHubActions => format!("::group::{}\n", escape_github_data(title)),
            CiSystem::GitLab => format!(
                "\x1b[0Ksection_start:{started_unix}:{}{}\r\x1b[0K{}\n",
                gitlab_section_name(id),
                if collapsed { "[collapsed=true]" } else { "" },
                one_line(title)
            ),
        }
    }

    /// The line that closes the section `id` opened with [`CiSystem::start`].
    pub fn end(self, id: &str, ended_unix: u64) -> String {
        match self {
            CiSystem::GitHubActions => "::endgroup::\n".to_string(),
            CiSystem::GitLab => format!(
                "\x1b[0Ksection_end:{ended_unix}:{}\r\x1b[0K\n",
                gitlab_section_name(id)
            ),
        }
    }
}

/// A section name GitLab accepts: every character outside `[A-Za-z0-9_.-]` becomes `_`.
pub fn gitlab_section_name(id: &str) -> String {
    let s: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        "section".to_string()
    } else {
        s
    }
}

/// GitHub's escaping of workflow-command data (`%`, CR, LF), so a title cannot end the command.
fn escape_github_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

/// A header must stay on its line: control characters become spaces.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Appends `markdown` to the GitHub job summary file (`$GITHUB_STEP_SUMMARY`), as GitHub
/// documents: the file collects every step's summary, so it is opened for appending, created
/// if missing, never truncated, and written in one call.
pub fn append_step_summary(path: &Path, markdown: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)?;
    f.write_all(markdown.as_bytes())?;
    f.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn detection_uses_the_documented_variables() {
        assert_eq!(CiSystem::detect(env(&[])), None);
        assert_eq!(
            CiSystem::detect(env(&[("GITHUB_ACTIONS", "true")])),
            Some(CiSystem::GitHubActions)
        );
        assert_eq!(
            CiSystem::detect(env(&[("GITLAB_CI", "true")])),
            Some(CiSystem::GitLab)
        );
        assert_eq!(CiSystem::detect(env(&[("GITLAB_CI", "false")])), None);
        assert_eq!(CiSystem::detect(env(&[("CI", "true")])), None);
        assert_eq!(
            CiSystem::detect(env(&[("GITLAB_CI", "true"), ("GITHUB_ACTIONS", "true")])),
            Some(CiSystem::GitHubActions)
        );
    }

    #[test]
    fn github_groups_escape_their_title() {
        let g = CiSystem::GitHubActions;
        assert_eq!(g.start("x", "app: built", 1, true), "::group::app: built\n");
        assert_eq!(
            g.start("x", "50% done\nnext", 1, true),
            "::group::50%25 done%0Anext\n"
        );
        assert_eq!(g.end("x", 2), "::endgroup::\n");
    }

    #[test]
    fn gitlab_sections_carry_time_name_and_collapse_flag() {
        let g = CiSystem::GitLab;
        assert_eq!(
            g.start("bk-build.web/app", "web/app: built", 1700000000, true),
            "\x1b[0Ksection_start:1700000000:bk-build.web_app[collapsed=true]\r\x1b[0Kweb/app: built\n"
        );
        assert_eq!(
            g.start("x", "bad: failed", 5, false),
            "\x1b[0Ksection_start:5:x\r\x1b[0Kbad: failed\n"
        );
        assert_eq!(
            g.end("bk-build.web/app", 1700000009),
            "\x1b[0Ksection_end:1700000009:bk-build.web_app\r\x1b[0K\n"
        );
        assert_eq!(gitlab_section_name("a b:c[d]é"), "a_b_c_d__");
        assert_eq!(gitlab_section_name(""), "section");
    }

    #[test]
    fn step_summary_is_appended_never_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("summary.md");
        std::fs::write(&p, "earlier step\n").unwrap();
        append_step_summary(&p, "| a |\n").unwrap();
        append_step_summary(&p, "| b |\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "earlier step\n| a |\n| b |\n"
        );
    }
}

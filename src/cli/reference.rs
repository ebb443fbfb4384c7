//! Shell completion scripts and manual pages, generated from the clap definitions of
//! [`super::Cli`] by `clap_complete` and `clap_mangen`, so they always match the flags.
//!
//! Both are rendered into memory first: the generators panic on a failed write, and a closed
//! pipe (`bk-build completion bash | head`) must end the run quietly instead.

use anyhow::Result;
use clap::CommandFactory;

/// The command tree as users see it: `bk-build`, without the hidden `help` subcommand pages.
fn command() -> clap::Command {
    let mut cmd = super::Cli::command().disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// The command tree without hidden commands. `clap_complete` offers hidden subcommands too
/// (clap issue #1335), and clap cannot remove one, so the root is assembled again from the
/// root's own arguments and its visible subcommands: nothing is restated, nothing can drift.
fn visible_command() -> clap::Command {
    let full = super::Cli::command();
    let mut root = clap::Command::new("bk-build").version(env!("CARGO_PKG_VERSION"));
    if let Some(a) = full.get_about() {
        root = root.about(a.clone());
    }
    root = root
        .args(full.get_arguments().cloned())
        .subcommands(full.get_subcommands().filter(|c| !c.is_hide_set()).cloned());
    let mut root = root.disable_help_subcommand(true);
    root.build();
    root
}

/// The completion script for `shell`, for the binary name `bk-build`.
pub fn completion(shell: clap_complete::Shell) -> Vec<u8> {
    let mut cmd = visible_command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "bk-build", &mut out);
    if shell == clap_complete::Shell::Bash {
        out = fix_bash_states(&out);
    }
    out
}

/// clap_complete's bash script (up to at least 4.6.12) names the state of `bk-build SUB` two
/// ways for a binary with a `-` in its name: its word loop reaches `bk__build__subcmd__SUB`,
/// while the `case` arms that offer SUB's flags are labelled `bk__subcmd__build__subcmd__SUB`,
/// so nothing after a subcommand completes (clap issue #6421). The arms are relabelled the
/// way the loop spells them; once clap is fixed, there is nothing left to replace.
fn fix_bash_states(script: &[u8]) -> Vec<u8> {
    String::from_utf8_lossy(script)
        .replace("bk__subcmd__build", "bk__build")
        .into_bytes()
}

/// The manual page (roff) of `bk-build` (`subcommand` = `None`), or of `bk-build-SUBCOMMAND`
/// (git's naming: `man bk-build-bake`). Hidden commands have none.
pub fn man_page(subcommand: Option<&str>) -> Result<Vec<u8>> {
    let cmd = command();
    let page = match subcommand {
        None => cmd,
        Some(name) => match cmd
            .get_subcommands()
            .find(|c| !c.is_hide_set() && c.get_name() == name)
        {
            Some(c) => c.clone(),
            None => anyhow::bail!(
                "man {name}: bk-build has no command {name:?}\n  fix: use one of {}, or nothing for the bk-build page",
                man_topics().join(", ")
            ),
        },
    };
    let mut out = Vec::new();
    clap_mangen::Man::new(page).render(&mut out)?;
    Ok(out)
}

/// The names `man` accepts: every visible subcommand.
pub fn man_topics() -> Vec<String> {
    command()
        .get_subcommands()
        .filter(|c| !c.is_hide_set())
        .map(|c| c.get_name().to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shell_gets_a_script_naming_the_commands() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
            clap_complete::Shell::Elvish,
            clap_complete::Shell::PowerShell,
        ] {
            let s = String::from_utf8(completion(shell)).unwrap();
            for word in ["bake", "build", "progress", "metadata-file"] {
                assert!(s.contains(word), "{shell}: no {word}");
            }
            assert!(
                !s.contains("bench-floor"),
                "{shell}: names a hidden command"
            );
        }
    }

    #[test]
    fn man_pages_exist_for_the_tool_and_each_command() {
        let top = String::from_utf8(man_page(None).unwrap()).unwrap();
        assert!(top.starts_with(".ie \\n(.g .ds Aq"), "{top:.80}");
        assert!(top.contains(".TH bk-build 1"));
        for topic in man_topics() {
            let page = String::from_utf8(man_page(Some(&topic)).unwrap()).unwrap();
            assert!(page.contains(&format!(".TH bk-build-{topic} 1")), "{topic}");
        }
        let err = man_page(Some("bench-floor")).unwrap_err().to_string();
        assert!(err.contains("no command \"bench-floor\""), "{err}");
    }
}

//! `cargo xtask completions SHELL`: clap's completion script, plus for bash a hook
//! that completes `cargo xtask ...` as typed (clap's script alone registers only a
//! `cargo-xtask` command, which nobody types).

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context as _;
use clap_complete::Shell;

/// Registered for `cargo`: the words after `cargo xtask` go to clap's function as if
/// `cargo_xtask` had been typed; any other cargo command goes to the completion cargo
/// had before (rustup's `_cargo`, loaded through bash-completion when it is lazy).
const BASH_CARGO_HOOK: &str = r#"
# `cargo xtask ...`: complete the words after `xtask` with the function above, as
# if `cargo_xtask` had been typed; leave every other cargo command to cargo's own
# completion, loaded first when bash-completion would load it lazily.
if [[ -z ${__cargo_xtask_loading-} ]] && ! complete -p cargo >/dev/null 2>&1 \
    && declare -F _completion_loader >/dev/null; then
    __cargo_xtask_loading=1
    _completion_loader cargo >/dev/null 2>&1
    unset __cargo_xtask_loading
fi
__cargo_xtask_cargo_fn="$(complete -p cargo 2>/dev/null | sed -n 's/.*-F \([^ ]*\).*/\1/p')"
_cargo_xtask_or_cargo() {
    if [[ ${COMP_CWORD} -ge 2 && ${COMP_WORDS[1]} == xtask ]]; then
        local COMP_WORDS=(cargo_xtask "${COMP_WORDS[@]:2}")
        local COMP_CWORD=$((COMP_CWORD - 1))
        compopt -o bashdefault -o default 2>/dev/null
        _cargo_xtask cargo_xtask "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD - 1]}"
        return
    fi
    if [[ -n ${__cargo_xtask_cargo_fn} && ${__cargo_xtask_cargo_fn} != _cargo_xtask_or_cargo ]]; then
        "${__cargo_xtask_cargo_fn}" "$@"
    fi
}
complete -F _cargo_xtask_or_cargo cargo
"#;

/// Prints the script for `shell` on stdout.
pub fn run(shell: Shell, cmd: clap::Command) -> anyhow::Result<ExitCode> {
    // clap_complete 4.6's bash script names a subcommand's branch apart from the one it
    // dispatches to when the command's name holds a `-` or a space (`cargo xtask`), which
    // leaves every subcommand without completions: bash gets a name with neither.
    let name = if shell == Shell::Bash { "cargo_xtask" } else { "cargo-xtask" };
    let mut cmd = cmd.name(name).bin_name(name);
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut script);
    if shell == Shell::Bash {
        script = without_hidden_words(&String::from_utf8_lossy(&script), &hidden_names(&cmd))
            .into_bytes();
        script.extend_from_slice(BASH_CARGO_HOOK.as_bytes());
    }
    std::io::stdout().write_all(&script).context("write the completion script to stdout")?;
    Ok(ExitCode::SUCCESS)
}

/// The names of the hidden subcommands (`__reaper`, `__standin`, `tunnel serve`...), at any
/// depth: internal entry points nobody should be offered.
fn hidden_names(cmd: &clap::Command) -> Vec<String> {
    let mut names = Vec::new();
    for sub in cmd.get_subcommands() {
        if sub.is_hide_set() {
            names.push(sub.get_name().to_string());
        }
        names.extend(hidden_names(sub));
    }
    names
}

/// clap_complete's bash script offers hidden subcommands among the words of its `opts="..."`
/// lists; takes those words out (their branches stay, unreachable by completion).
fn without_hidden_words(script: &str, hidden: &[String]) -> String {
    let mut out = String::with_capacity(script.len());
    for line in script.split_inclusive('\n') {
        match line.split_once("opts=\"") {
            Some((head, rest)) if !hidden.is_empty() => {
                let (words, tail) = rest.split_once('"').unwrap_or((rest, ""));
                let kept: Vec<&str> =
                    words.split(' ').filter(|w| !hidden.iter().any(|h| h == w)).collect();
                out.push_str(&format!("{head}opts=\"{}\"{tail}", kept.join(" ")));
            }
            _ => out.push_str(line),
        }
    }
    out
}

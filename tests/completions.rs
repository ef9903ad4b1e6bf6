//! `tandem completions bash|zsh|fish`: a script each shell reads, naming every command; bash's is
//! run to complete a command name and a flag.

mod support;

use std::process::Command;

fn script(shell: &str) -> String {
    let out = Command::new(support::bin()).args(["completions", shell]).output().expect("run");
    assert!(out.status.success(), "{shell}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf8")
}

#[test]
fn each_shell_gets_a_script_naming_every_command() {
    for shell in ["bash", "zsh", "fish"] {
        let s = script(shell);
        for word in ["run", "demo", "echo", "check", "await", "copy-self", "completions", "app", "syntax-only"] {
            assert!(s.contains(word), "{shell}'s script lacks {word}");
        }
    }
    let out = Command::new(support::bin()).args(["completions", "powershell"]).output().expect("run");
    assert!(!out.status.success(), "an unknown shell is refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("bash"), "the refusal lists the shells");
}

#[test]
fn bash_completes_a_command_and_a_flag() {
    if Command::new("bash").arg("--version").output().is_err() {
        println!("skipped: no bash here");
        return;
    }
    let complete = |words: &str| {
        let program = format!(
            "source <(\"$0\" completions bash)\nCOMP_WORDS=({words})\nCOMP_CWORD=$((${{#COMP_WORDS[@]}} - 1))\n\
             _tandem tandem \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"\n\
             printf '%s\\n' \"${{COMPREPLY[@]}}\""
        );
        let out = Command::new("bash").args(["-c", &program, support::bin()]).output().expect("bash");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf8").lines().map(str::to_owned).collect::<Vec<_>>()
    };
    assert_eq!(complete("tandem che"), ["check"]);
    assert!(complete("tandem check --syn").contains(&"--syntax-only".to_owned()));
    assert!(complete("tandem completions ''").contains(&"fish".to_owned()));
}

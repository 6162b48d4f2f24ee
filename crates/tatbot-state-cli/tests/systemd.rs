//! The systemd units in `config/systemd/` (issue #13 point 1): every command line they run is
//! one the CLI accepts, and `systemd-analyze verify` finds nothing wrong with them where that
//! tool is installed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::bin;

const INSTALLED_BINARY: &str = "/usr/local/bin/tatbot-state";

fn units_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/systemd")
}

fn units() -> Vec<(String, String)> {
    let mut units: Vec<(String, String)> = std::fs::read_dir(units_dir())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "service"))
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&path).unwrap())
        })
        .collect();
    units.sort();
    units
}

/// The example environment file, as `VAR=value` pairs.
fn example_env() -> HashMap<String, String> {
    std::fs::read_to_string(units_dir().join("tatbot-state.env"))
        .unwrap()
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
        .collect()
}

/// Every `ExecStart=`/`ExecStop=` line, with `${VAR}` taken from the example env file, parses:
/// the same arguments followed by `--help` exit 0, so no flag or subcommand is misspelled.
#[test]
fn unit_command_lines_are_accepted_by_the_cli() {
    let env = example_env();
    let units = units();
    assert!(units.len() >= 4, "the fleet's units are there: {units:?}");
    let mut checked = 0;
    for (name, text) in &units {
        for line in text.lines() {
            let Some(command) = line
                .strip_prefix("ExecStart=")
                .or_else(|| line.strip_prefix("ExecStop="))
            else {
                continue;
            };
            let mut words = command.split_whitespace();
            assert_eq!(words.next(), Some(INSTALLED_BINARY), "{name}: {line}");
            let args: Vec<String> = words
                .map(
                    |word| match word.strip_prefix("${").and_then(|rest| rest.strip_suffix('}')) {
                        Some(var) => env
                            .get(var)
                            .unwrap_or_else(|| panic!("{name}: {var} is not in tatbot-state.env"))
                            .clone(),
                        None => word.to_owned(),
                    },
                )
                .collect();
            let output = bin().args(&args).arg("--help").output().unwrap();
            assert!(
                output.status.success(),
                "{name}: `{}` is refused: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked >= 5, "{checked} command lines checked");
}

/// `systemd-analyze verify` reports nothing for the units (with the binary path pointed at the
/// built one, which it checks is executable). Skipped, saying so, where systemd is not installed.
#[test]
fn units_pass_systemd_analyze_verify() {
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        eprintln!("systemd-analyze is not installed; skipping the unit verification");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let binary = env!("CARGO_BIN_EXE_tatbot-state");
    let mut paths = Vec::new();
    for (name, text) in units() {
        let path = dir.path().join(&name);
        std::fs::write(&path, text.replace(INSTALLED_BINARY, binary)).unwrap();
        paths.push(path);
    }
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .args(&paths)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    // It exits 0 on many problems and only prints them, so any line naming a unit is a failure.
    let problems: Vec<&str> = stderr.lines().filter(|line| line.contains(".service")).collect();
    assert!(output.status.success() && problems.is_empty(), "{stderr}");
}

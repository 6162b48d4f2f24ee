//! The "Examples:" section of every subcommand's `--help`, in one table.
//!
//! Kept here rather than on each `Args` struct so that one look shows every command's examples,
//! and so that [`tests::every_subcommand_has_examples`] can check none is missing. [`command`]
//! appends them to the help text (after any note the command has of its own).

use clap::CommandFactory as _;

use crate::cmd::Cli;

/// Examples by subcommand path (`param set` is `["param", "set"]`).
const EXAMPLES: &[(&[&str], &str)] = &[
    (
        &["server"],
        "tatbot-state server start\n  tatbot-state server status\n  tatbot-state server stop",
    ),
    (
        &["server", "start"],
        "tatbot-state server start\n  tatbot-state -p 6380 server start --dir /tmp/redis-test\n  tatbot-state server start --ha --bind 192.168.1.97\n  tatbot-state server start --replica-of 192.168.1.97:6379",
    ),
    (
        &["server", "sentinel"],
        "tatbot-state server sentinel start --monitor 192.168.1.97:6379 --quorum 2",
    ),
    (
        &["server", "sentinel", "start"],
        "tatbot-state server sentinel start --monitor 192.168.1.97:6379 --quorum 2\n  tatbot-state server sentinel start --monitor 192.168.1.97:6379 --quorum 2 --bind 192.168.1.98",
    ),
    (&["server", "stop"], "tatbot-state server stop"),
    (
        &["server", "repair"],
        "tatbot-state server repair --data /var/lib/redis\n  tatbot-state server repair --dir /var/lib/tatbot-state",
    ),
    (
        &["server", "status"],
        "tatbot-state server status\n  tatbot-state --json server status",
    ),
    (
        &["demo"],
        "tatbot-state demo\n  tatbot-state demo --fast\n  tatbot-state demo --redis redis://127.0.0.1:6379",
    ),
    (&["status"], "tatbot-state status\n  tatbot-state -h eek status --json"),
    (
        &["health"],
        "tatbot-state health\n  tatbot-state health hog\n  tatbot-state --json health",
    ),
    (
        &["robot"],
        "tatbot-state robot\n  tatbot-state robot hog\n  tatbot-state --json robot hog",
    ),
    (&["sessions"], "tatbot-state sessions\n  tatbot-state --json sessions"),
    (
        &["record"],
        "tatbot-state record stroke_hog_1795626937 -o run.mcap\n  tatbot-state record --all --follow -o fleet.mcap",
    ),
    (
        &["replay"],
        "tatbot-state replay run.mcap\n  tatbot-state replay run.mcap --rate 10 --exit-when-done\n  tatbot-state replay run.mcap --into redis://127.0.0.1:6379",
    ),
    (
        &["foxglove"],
        "tatbot-state foxglove\n  tatbot-state foxglove --bind 127.0.0.1:0",
    ),
    (
        &["progress"],
        "tatbot-state progress\n  tatbot-state progress stroke_hog_1795626937",
    ),
    (
        &["events"],
        "tatbot-state events\n  tatbot-state events -n 10\n  tatbot-state --json events | jq .type",
    ),
    (
        &["history"],
        "tatbot-state history stroke_hog_1795626937\n  tatbot-state history stroke_hog_1795626937 --follow",
    ),
    (
        &["param"],
        "tatbot-state param list arms\n  tatbot-state param set arms.goal_time_slow 2.5",
    ),
    (&["param", "get"], "tatbot-state param get arms.goal_time_slow"),
    (&["param", "set"], "tatbot-state param set arms.goal_time_slow 2.5"),
    (
        &["param", "list"],
        "tatbot-state param list\n  tatbot-state param list arms",
    ),
    (
        &["param", "describe"],
        "tatbot-state param describe arms.goal_time_slow",
    ),
    (&["param", "dump"], "tatbot-state param dump arms > arms.yaml"),
    (
        &["param", "load"],
        "tatbot-state param load arms.yaml\n  tatbot-state param load src/conf/arms/default.yaml --prefix arms",
    ),
    (&["param", "watch"], "tatbot-state param watch arms"),
    (
        &["param", "undeclare"],
        "tatbot-state --user admin param undeclare arms.old_setting",
    ),
    (
        &["param", "history"],
        "tatbot-state param history\n  tatbot-state param history arms.goal_time_slow",
    ),
    (&["watch"], "tatbot-state watch"),
    (
        &["viz"],
        "tatbot-state viz\n  tatbot-state viz --bind localhost:8080\n  TATBOT_VIZ_TOKEN=secret tatbot-state viz --bind 0.0.0.0:8080",
    ),
    (
        &["monitor"],
        "tatbot-state monitor\n  tatbot-state -h eek monitor --refresh 2",
    ),
    (
        &["simulate"],
        "tatbot-state simulate\n  tatbot-state --node-id hog simulate --strokes 10 --stroke-length 50 --hz 100",
    ),
    (
        &["heartbeat"],
        "tatbot-state heartbeat\n  tatbot-state --json heartbeat --once",
    ),
    (
        &["mcp"],
        "tatbot-state mcp\n  tatbot-state mcp --transport http --bind localhost:8000",
    ),
    (&["config"], "tatbot-state config\n  tatbot-state --json config"),
    (&["doctor"], "tatbot-state doctor\n  tatbot-state -h eek doctor --json"),
    (
        &["bench"],
        "tatbot-state bench --quick\n  tatbot-state --json bench\n  tatbot-state bench --only failover",
    ),
];

/// The clap command of [`Cli`] with every subcommand's examples appended to its help.
pub fn command() -> clap::Command {
    let mut command = Cli::command();
    for (path, examples) in EXAMPLES {
        command = with_examples(command, path, examples);
    }
    command
}

fn with_examples(command: clap::Command, path: &[&str], examples: &str) -> clap::Command {
    let Some((first, rest)) = path.split_first() else {
        let note = command
            .get_after_help()
            .map(|note| format!("{note}\n\n"))
            .unwrap_or_default();
        return command.after_help(format!("{note}Examples:\n  {examples}"));
    };
    command.mut_subcommand(*first, |sub| with_examples(sub, rest, examples))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(command: &mut clap::Command, path: &str) {
        let help = command.render_long_help().to_string();
        assert!(
            help.contains("Examples:\n  tatbot-state"),
            "`{path} --help` has no examples:\n{help}"
        );
        // The command's own flags come first, the global ones in their own section after them.
        let own = help.find("Options:");
        let global = help.find("Global Options:").expect("a Global Options section");
        assert!(own.is_none_or(|own| own < global), "`{path} --help`:\n{help}");
        for sub in command.get_subcommands_mut() {
            let name = sub.get_name().to_owned();
            if name != "help" {
                check(sub, &format!("{path} {name}"));
            }
        }
    }

    /// Every example parses: the flags and arguments it shows exist.
    #[test]
    fn examples_parse() {
        for (_, examples) in EXAMPLES {
            for line in examples.lines() {
                let words: Vec<&str> = line.split_whitespace().skip_while(|word| word.contains('=')).collect();
                let words: Vec<&str> = words
                    .split(|word| *word == "|" || *word == ">")
                    .next()
                    .unwrap_or_default()
                    .to_vec();
                if let Err(err) = command().try_get_matches_from(&words) {
                    panic!("{line:?} does not parse: {err}");
                }
            }
        }
    }

    /// Issue #13 point 6: every subcommand's `--help` ends with examples, and lists its own
    /// flags before the global ones.
    #[test]
    fn every_subcommand_has_examples() {
        let mut command = command();
        command.build();
        for sub in command.get_subcommands_mut() {
            let name = sub.get_name().to_owned();
            if name != "help" {
                check(sub, &name);
            }
        }
    }
}

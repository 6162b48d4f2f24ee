//! `tatbot-state param get | set | list | describe | dump | load | watch | history`: the
//! parameter server from a shell.
//!
//! Each action is one or two calls of [`tatbot_state::Params`]; this module only parses and
//! prints. Reads print text for people, or JSON with `--json` (an object for `get`, `set`,
//! `describe`, `dump` and `load`, an array for `list`, one object per line for the streams
//! `watch` and `history`). `set` reads the parameter first so that its value is parsed with the declared
//! type (`2` for a float is `2.0`; strings are taken as given), and the writes are recorded as
//! made by this node (`--node-id`, default the host name).
//!
//! Exit codes: a value or name that breaks a rule is 2, a parameter that is not declared is 5, a
//! compare-and-set that lost (`--if-version`) is 1, and Redis unreachable is 3. `load` applies a
//! file all or nothing, so a file with one bad value changes nothing and exits 2; `--dry-run`
//! prints what would change and changes nothing.

use std::io::Read as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use tatbot_state::params::{CasOutcome, Change, ChangeOp, LoadPlan, MAX_LOAD_BYTES, Prefix};
use tatbot_state::{Param, ParamName, Params};
use tokio::io::AsyncReadExt as _;

use crate::ctx::GlobalArgs;
use crate::exit;
use crate::output::table;
use crate::signal::shutdown_signal;

/// How many changes `history` prints without `-n`.
const DEFAULT_HISTORY: usize = 20;

/// Flags of `param`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What to do.
    #[command(subcommand)]
    action: Action,
}

/// The `param` subcommands.
#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Print a parameter's value
    Get(NameArgs),
    /// Set a parameter's value (checked against its type, range, step and read-only flag)
    Set(SetArgs),
    /// List parameters with their values and versions
    List(PrefixArgs),
    /// Show a parameter's declaration, value and last change
    Describe(NameArgs),
    /// Print parameter values as YAML (loadable with `param load`)
    Dump(PrefixArgs),
    /// Load values from YAML (a dump or a Hydra config), all or nothing; undeclared names are declared with the type of their value
    Load(LoadArgs),
    /// Print parameter changes as they happen
    Watch(WatchArgs),
    /// Print the latest changes from the audit log, oldest first
    History(HistoryArgs),
    /// Remove a parameter and its value (admin; the robot and viewer roles are refused)
    Undeclare(NameArgs),
}

/// One parameter name.
#[derive(Debug, clap::Args)]
struct NameArgs {
    /// The dotted parameter name, e.g. arms.goal_time_slow
    name: String,
}

/// Flags of `param set`.
#[derive(Debug, clap::Args)]
struct SetArgs {
    /// The dotted parameter name
    name: String,
    /// The value: text for strings, else YAML such as 2.5, true or "[1, 2]"
    #[arg(allow_hyphen_values = true)]
    value: String,
    /// Set only if the parameter's version is still N (compare-and-set)
    #[arg(long, value_name = "N")]
    if_version: Option<u64>,
}

/// An optional prefix.
#[derive(Debug, clap::Args)]
struct PrefixArgs {
    /// Only this parameter and those under it, e.g. arms [default: all]
    prefix: Option<String>,
}

/// Flags of `param load`.
#[derive(Debug, clap::Args)]
struct LoadArgs {
    /// The YAML file, or - for stdin
    file: PathBuf,
    /// Put the file's names under this prefix, e.g. arms for a Hydra arms config
    #[arg(long, value_name = "PREFIX")]
    prefix: Option<String>,
    /// Show what would change and change nothing
    #[arg(long)]
    dry_run: bool,
}

/// Flags of `param watch`.
#[derive(Debug, clap::Args)]
struct WatchArgs {
    /// Only this parameter and those under it [default: all]
    prefix: Option<String>,
    /// Exit after N changes
    #[arg(short = 'n', long, value_name = "N")]
    count: Option<u64>,
}

/// Flags of `param history`.
#[derive(Debug, clap::Args)]
struct HistoryArgs {
    /// Only this parameter and those under it [default: all]
    prefix: Option<String>,
    /// How many of the latest changes to print
    #[arg(short = 'n', long, value_name = "N", default_value_t = DEFAULT_HISTORY)]
    count: usize,
}

/// Runs `param`.
pub async fn run(global: &GlobalArgs, args: Args) -> anyhow::Result<u8> {
    // Names are checked before connecting, so a typo is a usage error even with Redis down.
    match args.action {
        Action::Get(args) => get(global, &ParamName::new(args.name)?).await,
        Action::Set(args) => set(global, &ParamName::new(args.name.as_str())?, &args).await,
        Action::List(args) => list(global, &prefix(args.prefix.as_deref())?).await,
        Action::Describe(args) => describe(global, &ParamName::new(args.name)?).await,
        Action::Dump(args) => dump(global, &prefix(args.prefix.as_deref())?).await,
        Action::Load(args) => load(global, &args).await,
        Action::Watch(args) => watch(global, &prefix(args.prefix.as_deref())?, args.count).await,
        Action::History(args) => history(global, &prefix(args.prefix.as_deref())?, args.count).await,
        Action::Undeclare(args) => undeclare(global, &ParamName::new(args.name)?).await,
    }
}

fn prefix(text: Option<&str>) -> anyhow::Result<Prefix> {
    Ok(Prefix::new(text.unwrap_or(""))?)
}

async fn params(global: &GlobalArgs) -> anyhow::Result<Params> {
    Ok(global.manager().await?.params())
}

/// The parameter, or the "not found" exit.
async fn require(params: &Params, name: &ParamName) -> anyhow::Result<Param> {
    let found = params
        .get(name)
        .await
        .with_context(|| format!("reading parameter {name}"))?;
    found.ok_or_else(|| {
        exit::not_found(format!(
            "no parameter {name}; hint: list them with `tatbot-state param list`"
        ))
    })
}

async fn get(global: &GlobalArgs, name: &ParamName) -> anyhow::Result<u8> {
    let param = require(&params(global).await?, name).await?;
    let mut out = std::io::stdout().lock();
    if global.json {
        writeln!(out, "{}", serde_json::to_string(&param)?)?;
    } else {
        writeln!(out, "{}", param.value)?;
    }
    Ok(exit::SUCCESS)
}

async fn set(global: &GlobalArgs, name: &ParamName, args: &SetArgs) -> anyhow::Result<u8> {
    let params = params(global).await?;
    let current = require(&params, name).await?;
    let value = current.parse_value(&args.value)?;
    let param = match args.if_version {
        None => params.set(name, &value).await?,
        Some(version) => match params.set_if_version(name, &value, version).await? {
            CasOutcome::Applied(param) => *param,
            CasOutcome::Conflict { version: now } => {
                return Err(tatbot_state::Error::Conflict(format!(
                    "{name}: version is {now}, not {version}; nothing was written"
                ))
                .into());
            }
        },
    };
    let mut out = std::io::stdout().lock();
    if global.json {
        writeln!(out, "{}", serde_json::to_string(&param)?)?;
    } else {
        writeln!(out, "{} = {} (version {})", param.name, param.value, param.version)?;
    }
    Ok(exit::SUCCESS)
}

/// Removes a parameter; an admin operation, so a refusal says which user may.
async fn undeclare(global: &GlobalArgs, name: &ParamName) -> anyhow::Result<u8> {
    let params = params(global).await?;
    let removed = match params.undeclare(name).await {
        Ok(removed) => removed,
        Err(tatbot_state::Error::ParamNotFound(_)) => {
            return Err(exit::not_found(format!(
                "no parameter {name}; hint: list them with `tatbot-state param list`"
            )));
        }
        Err(err @ tatbot_state::Error::PermissionDenied { .. }) => {
            return Err(anyhow::Error::new(err).context(format!(
                "cannot undeclare {name}: an admin operation (the robot and viewer roles may not remove parameters); connect as the admin user (--user admin)"
            )));
        }
        Err(err) => return Err(anyhow::Error::new(err).context(format!("undeclaring {name}"))),
    };
    let mut out = std::io::stdout().lock();
    if global.json {
        writeln!(out, "{}", serde_json::to_string(&removed)?)?;
    } else {
        writeln!(
            out,
            "- {} ({}) undeclared; it was {} (version {})",
            removed.name, removed.descriptor.param_type, removed.value, removed.version
        )?;
    }
    Ok(exit::SUCCESS)
}

/// Lists parameters; a corrupt one is a row (or a `{"name", "key", "error"}` object) carrying
/// its error after the others, and never hides them.
async fn list(global: &GlobalArgs, prefix: &Prefix) -> anyhow::Result<u8> {
    let entries = params(global)
        .await?
        .list_entries(prefix)
        .await
        .context("listing parameters")?;
    let (listed, corrupt): (Vec<_>, Vec<_>) = entries.into_iter().partition(|entry| entry.value.is_ok());
    let listed: Vec<Param> = listed.into_iter().filter_map(|entry| entry.value.ok()).collect();
    let mut out = std::io::stdout().lock();
    if global.json {
        let mut shown_json: Vec<serde_json::Value> = listed.iter().map(|param| serde_json::json!(param)).collect();
        for entry in &corrupt {
            let error = entry
                .value
                .as_ref()
                .err()
                .map(|err| err.report().to_string())
                .unwrap_or_default();
            shown_json.push(serde_json::json!({"name": entry.id, "key": entry.key, "error": error}));
        }
        writeln!(out, "{}", serde_json::to_string(&shown_json)?)?;
        return Ok(exit::SUCCESS);
    }
    let mut rows: Vec<Vec<String>> = listed
        .iter()
        .map(|param| {
            vec![
                param.name.to_string(),
                param.descriptor.param_type.to_string(),
                param.version.to_string(),
                param.actor.to_string(),
                param.updated.to_string(),
                param.value.to_string(),
            ]
        })
        .collect();
    for entry in &corrupt {
        let error = entry
            .value
            .as_ref()
            .err()
            .map(|err| err.report().to_string())
            .unwrap_or_default();
        rows.push(vec![entry.id.clone(), format!("error: {error}")]);
    }
    write!(
        out,
        "{}",
        table(&["NAME", "TYPE", "VERSION", "BY", "UPDATED", "VALUE"], &rows)
    )?;
    Ok(exit::SUCCESS)
}

async fn describe(global: &GlobalArgs, name: &ParamName) -> anyhow::Result<u8> {
    let param = require(&params(global).await?, name).await?;
    let mut out = std::io::stdout().lock();
    if global.json {
        writeln!(out, "{}", serde_json::to_string(&param)?)?;
        return Ok(exit::SUCCESS);
    }
    let descriptor = &param.descriptor;
    let is_int = descriptor.param_type.element() == tatbot_state::ParamType::Int;
    let bound = |bound: Option<f64>| match bound {
        None => "-".to_owned(),
        Some(bound) if is_int => format!("{bound:.0}"),
        Some(bound) => format!("{bound:?}"),
    };
    writeln!(out, "{}", param.name)?;
    writeln!(out, "  type:         {}", descriptor.param_type)?;
    writeln!(out, "  value:        {}", param.value)?;
    writeln!(out, "  default:      {}", descriptor.default)?;
    if descriptor.param_type.is_numeric() {
        if descriptor.min.is_none() && descriptor.max.is_none() {
            writeln!(out, "  range:        any")?;
        } else {
            writeln!(
                out,
                "  range:        {} .. {}",
                bound(descriptor.min),
                bound(descriptor.max)
            )?;
        }
        writeln!(out, "  step:         {}", bound(descriptor.step))?;
    }
    writeln!(
        out,
        "  read-only:    {}",
        if descriptor.read_only { "yes" } else { "no" }
    )?;
    writeln!(out, "  description:  {}", descriptor.description)?;
    writeln!(
        out,
        "  version:      {} (last change by {} at {})",
        param.version, param.actor, param.updated
    )?;
    Ok(exit::SUCCESS)
}

async fn dump(global: &GlobalArgs, prefix: &Prefix) -> anyhow::Result<u8> {
    let params = params(global).await?;
    let mut out = std::io::stdout().lock();
    if global.json {
        let listed = params.list(prefix).await.context("listing parameters")?;
        let values: serde_json::Map<String, serde_json::Value> = listed
            .into_iter()
            .map(|param| Ok((param.name.to_string(), serde_json::to_value(&param.value)?)))
            .collect::<anyhow::Result<_>>()?;
        writeln!(out, "{}", serde_json::to_string(&values)?)?;
    } else {
        write!(out, "{}", params.dump(prefix).await.context("dumping parameters")?)?;
    }
    Ok(exit::SUCCESS)
}

/// Reads the YAML file, or stdin for `-`, stopping one byte past [`MAX_LOAD_BYTES`]: endless
/// input (`/dev/zero`, a pipe that keeps writing) costs at most that much memory before it is
/// refused.
async fn read_bounded(file: &Path) -> anyhow::Result<String> {
    let stdin = file.as_os_str() == "-";
    let shown = if stdin {
        "stdin".into()
    } else {
        file.display().to_string()
    };
    let limit = MAX_LOAD_BYTES as u64 + 1;
    let mut bytes = Vec::new();
    if stdin {
        tokio::io::stdin()
            .take(limit)
            .read_to_end(&mut bytes)
            .await
            .context("reading YAML from stdin")?;
    } else {
        // The workspace's tokio has no `fs` feature; a bounded file read is short blocking work.
        let path = file.to_owned();
        bytes = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
            let mut bytes = Vec::new();
            std::io::Read::take(std::fs::File::open(path)?, limit).read_to_end(&mut bytes)?;
            Ok(bytes)
        })
        .await
        .context("reading the YAML file")?
        .with_context(|| format!("reading {shown}"))?;
    }
    if bytes.len() > MAX_LOAD_BYTES {
        return Err(tatbot_state::Error::InvalidInput(format!(
            "{shown} is larger than the limit of {MAX_LOAD_BYTES} bytes (4 MiB) for a parameter file; split it"
        ))
        .into());
    }
    String::from_utf8(bytes).map_err(|err| {
        tatbot_state::Error::InvalidInput(format!(
            "{shown} is not UTF-8 text (invalid byte at offset {})",
            err.utf8_error().valid_up_to()
        ))
        .into()
    })
}

async fn load(global: &GlobalArgs, args: &LoadArgs) -> anyhow::Result<u8> {
    let prefix = prefix(args.prefix.as_deref())?;
    let shown = args.file.display();
    let text = read_bounded(&args.file).await?;
    let params = params(global).await?;
    let plan = if args.dry_run {
        params.plan_load(&text, &prefix).await
    } else {
        params.load(&text, &prefix).await
    }
    .with_context(|| format!("loading {shown}"))?;
    print_plan(global, &plan, args.dry_run)?;
    if plan.errors.is_empty() {
        Ok(exit::SUCCESS)
    } else {
        Ok(exit::USAGE)
    }
}

fn print_plan(global: &GlobalArgs, plan: &LoadPlan, dry_run: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if global.json {
        let mut value = serde_json::to_value(plan)?;
        if let Some(object) = value.as_object_mut() {
            object.insert("applied".to_owned(), (!dry_run && plan.errors.is_empty()).into());
        }
        writeln!(out, "{}", serde_json::to_string(&value)?)?;
        return Ok(());
    }
    for change in &plan.changes {
        match &change.old {
            None => writeln!(out, "+ {} ({}) = {}", change.name, change.param_type, change.new)?,
            Some(old) => writeln!(out, "~ {}: {} -> {}", change.name, old, change.new)?,
        }
    }
    for skipped in &plan.skipped {
        writeln!(out, "  skipped {}: {}", skipped.path, skipped.reason)?;
    }
    for error in &plan.errors {
        writeln!(out, "! {error}")?;
    }
    let declared = plan
        .changes
        .iter()
        .filter(|change| change.op == ChangeOp::Declare)
        .count();
    let verdict = match (dry_run, plan.errors.is_empty()) {
        (true, true) => "dry run, nothing changed",
        (true, false) => "dry run, and the load would fail: nothing changed",
        (false, _) => "loaded",
    };
    writeln!(
        out,
        "{} new, {} changed, {} unchanged, {} skipped: {verdict}",
        declared,
        plan.changes.len() - declared,
        plan.unchanged.len(),
        plan.skipped.len()
    )?;
    Ok(())
}

async fn watch(global: &GlobalArgs, prefix: &Prefix, count: Option<u64>) -> anyhow::Result<u8> {
    let params = params(global).await?;
    let mut watch = params.watch(prefix).await.context("watching parameters")?;
    let watched = if prefix.name().is_some() {
        prefix.to_string()
    } else {
        "all parameters".to_owned()
    };
    // Stderr is diagnostics only; if it is closed there is no one to tell.
    let _ = writeln!(std::io::stderr(), "watching {watched}");
    if count == Some(0) {
        return Ok(exit::SUCCESS);
    }
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let mut printed: u64 = 0;
    loop {
        let next = tokio::select! {
            () = &mut shutdown => return Ok(exit::SUCCESS),
            next = watch.next() => next,
        };
        let change = match next {
            Ok(change) => change,
            Err(err) if err.is_connection_error() => {
                return Err(anyhow::Error::new(err).context("watching parameters"));
            }
            Err(err) => {
                // A gap or a bad entry: say so and keep watching.
                let _ = writeln!(std::io::stderr(), "tatbot-state: {err}");
                continue;
            }
        };
        print_change(global, &change)?;
        printed += 1;
        if count.is_some_and(|count| printed >= count) {
            return Ok(exit::SUCCESS);
        }
    }
}

async fn history(global: &GlobalArgs, prefix: &Prefix, count: usize) -> anyhow::Result<u8> {
    let changes = params(global)
        .await?
        .history(prefix, count)
        .await
        .context("reading the parameter audit log")?;
    for change in &changes {
        print_change(global, change)?;
    }
    Ok(exit::SUCCESS)
}

fn print_change(global: &GlobalArgs, change: &Change) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if global.json {
        writeln!(out, "{}", serde_json::to_string(change)?)?;
    } else {
        let old = change
            .old
            .as_ref()
            .map_or_else(|| "(new)".to_owned(), ToString::to_string);
        writeln!(
            out,
            "{}  {}  {} v{}  {} -> {}  by {}",
            change.time,
            change.op.as_str(),
            change.name,
            change.version,
            old,
            change.new,
            change.actor
        )?;
    }
    out.flush()?;
    Ok(())
}

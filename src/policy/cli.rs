//! `mangaassist policy ...`: clap types and the functions behind them. main.rs nests
//! [`PolicyArgs`] as a subcommand and calls [`run`]; every command writes its report to `out` and
//! returns an error (so a non-zero exit) when the policy is invalid or the audit log unusable.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use crate::policy::file;
use crate::policy::store::{self, Activation, AuditLog, AuditRecord};
use crate::policy::{Policy, PolicyError};

/// `mangaassist policy`: validate, list and roll back model-tier policies.
#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: PolicyCommand,
}

/// The policy subcommands.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Check a policy file: prints OK and a summary, or every error (exit status 1).
    Validate {
        /// The policy file (TOML; see policy.example.toml and docs/policy.md).
        file: PathBuf,
    },
    /// List the activated versions: number, time, source, content hash, diff summary.
    History {
        /// Where the policy file and its audit log are.
        #[command(flatten)]
        location: Location,
        /// One JSON record per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Restore a version's content into the policy file (a running server picks it up by its file
    /// watch) and record the activation. Default: the version before the current one.
    Rollback {
        /// Version number from `policy history`.
        version: Option<u64>,
        /// Where the policy file and its audit log are.
        #[command(flatten)]
        location: Location,
    },
}

/// Where the policy file and its audit log are.
#[derive(Debug, Args)]
pub struct Location {
    /// The policy file the server watches.
    #[arg(
        long,
        short = 'f',
        default_value = "policy.toml",
        env = "MANGAASSIST_POLICY"
    )]
    pub file: PathBuf,
    /// Audit directory (default: `<file>.history` next to the file).
    #[arg(long, env = "MANGAASSIST_POLICY_AUDIT_DIR")]
    pub audit_dir: Option<PathBuf>,
}

/// Why a policy command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The policy or its audit log.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// Writing the report.
    #[error("write output: {0}")]
    Output(#[from] std::io::Error),
}

/// Runs one policy command, writing its report to `out`.
pub fn run(args: PolicyArgs, out: &mut dyn Write) -> Result<(), CliError> {
    match args.command {
        PolicyCommand::Validate { file } => validate(&file, out),
        PolicyCommand::History { location, json } => history(&location, json, out),
        PolicyCommand::Rollback { version, location } => {
            let activation =
                store::rollback(&location.file, location.audit_dir.as_deref(), version)?;
            write_rollback(&location.file, &activation, out)
        }
    }
}

/// `policy validate FILE`.
pub fn validate(path: &Path, out: &mut dyn Write) -> Result<(), CliError> {
    let (policy, content) = file::load(path)?;
    writeln!(
        out,
        "OK {} (sha256 {})",
        path.display(),
        &store::sha256_hex(&content)[..12]
    )?;
    write_summary(&policy, out)
}

/// The per-task summary and tier warnings of a valid policy.
pub fn write_summary(policy: &Policy, out: &mut dyn Write) -> Result<(), CliError> {
    for line in policy.summary() {
        writeln!(out, "  {line}")?;
    }
    for v in policy.violations() {
        writeln!(out, "warning: {v}")?;
    }
    Ok(())
}

/// `policy history`.
pub fn history(location: &Location, json: bool, out: &mut dyn Write) -> Result<(), CliError> {
    let audit = AuditLog::for_policy(&location.file, location.audit_dir.as_deref());
    let records = audit.records()?;
    if json {
        for r in &records {
            let line = serde_json::to_string(r).map_err(std::io::Error::other)?;
            writeln!(out, "{line}")?;
        }
        return Ok(());
    }
    if records.is_empty() {
        writeln!(
            out,
            "no versions recorded in {}",
            audit.log_path().display()
        )?;
        return Ok(());
    }
    writeln!(
        out,
        "{:>7}  {:<20}  {:<12}  {:<12}  summary",
        "version", "time", "source", "sha256"
    )?;
    for r in &records {
        writeln!(out, "{}", history_line(r))?;
    }
    Ok(())
}

/// One row of `policy history`.
pub fn history_line(r: &AuditRecord) -> String {
    let restored = r
        .restored_from
        .map(|v| format!(" (restores v{v})"))
        .unwrap_or_default();
    format!(
        "{:>7}  {:<20}  {:<12}  {:<12}  {}{restored}",
        r.version,
        r.at,
        r.source.as_str(),
        &r.sha256[..r.sha256.len().min(12)],
        r.diff.summary()
    )
}

fn write_rollback(path: &Path, a: &Activation, out: &mut dyn Write) -> Result<(), CliError> {
    if a.recorded {
        writeln!(
            out,
            "restored v{} into {} as v{}; a running server reloads it by file watch",
            a.record.restored_from.unwrap_or(0),
            path.display(),
            a.record.version
        )?;
    } else {
        writeln!(
            out,
            "{} already holds that content (v{}); nothing recorded",
            path.display(),
            a.record.version
        )?;
    }
    for v in &a.violations {
        writeln!(out, "warning: {v}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Debug, Parser)]
    struct Top {
        #[command(subcommand)]
        command: TopCommand,
    }

    #[derive(Debug, Subcommand)]
    enum TopCommand {
        Policy(PolicyArgs),
    }

    #[test]
    fn clap_definitions_are_consistent_and_parse() {
        Top::command().debug_assert();
        let top =
            Top::try_parse_from(["mangaassist", "policy", "rollback", "3", "--file", "p.toml"])
                .unwrap();
        let TopCommand::Policy(args) = top.command;
        match args.command {
            PolicyCommand::Rollback { version, location } => {
                assert_eq!(version, Some(3));
                assert_eq!(location.file, PathBuf::from("p.toml"));
            }
            other => panic!("{other:?}"),
        }
    }
}

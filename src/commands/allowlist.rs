//! `mailconnect allowlist import`: publishes a data center's ranges for one protocol from a file
//! with one entry a line, as published lists are written (bare addresses, CIDRs, list markers).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;

use crate::config::{DatabaseSettings, KeySettings};
use crate::domain::allowlist::Protocol;
use crate::domain::allowlist::import::import_lines;
use crate::domain::directory::DataCenterId;
use crate::domain::principal::{Principal, Role};
use crate::service::allowlist::AllowlistService;
use crate::service::clock::SystemClock;
use crate::storage::Database;

#[derive(clap::Subcommand)]
pub enum AllowlistCommand {
    /// Publish the ranges listed in FILE (one per line) as the complete set of a data center and
    /// protocol. Every bad line is reported with its number; nothing is published unless all
    /// lines are good or --skip-invalid is given.
    Import(ImportArgs),
}

#[derive(clap::ValueEnum, Clone, Copy)]
pub enum ProtocolArg {
    Smtp,
    Imap,
}

#[derive(clap::Args)]
pub struct ImportArgs {
    /// The data center whose list is replaced, e.g. na1.
    #[arg(long)]
    data_center: String,
    #[arg(long, value_enum)]
    protocol: ProtocolArg,
    /// Publish the good lines even when some are bad.
    #[arg(long)]
    skip_invalid: bool,
    /// The list: one address or CIDR a line; blank lines and `#` comments are ignored.
    file: PathBuf,
    #[command(flatten)]
    keys: KeySettings,
    #[command(flatten)]
    database: DatabaseSettings,
}

pub async fn run(command: AllowlistCommand) -> anyhow::Result<()> {
    match command {
        AllowlistCommand::Import(args) => import(args).await,
    }
}

async fn import(args: ImportArgs) -> anyhow::Result<()> {
    let data_center =
        DataCenterId::parse("--data-center", &args.data_center).map_err(anyhow::Error::msg)?;
    let protocol = match args.protocol {
        ProtocolArg::Smtp => Protocol::Smtp,
        ProtocolArg::Imap => Protocol::Imap,
    };
    let name = args.file.display().to_string();
    let text = std::fs::read_to_string(&args.file).with_context(|| format!("reading {name}"))?;
    let report = import_lines(&text);
    for problem in &report.problems {
        eprintln!("{name}: {problem}");
    }
    anyhow::ensure!(
        report.problems.is_empty() || args.skip_invalid,
        "{} bad line(s) in {name}; nothing published (fix them, or pass --skip-invalid to publish the {} good one(s))",
        report.problems.len(),
        report.ranges.len()
    );
    // Clearing a list is a deliberate PublishRanges call, never the accident of an empty file.
    anyhow::ensure!(
        !report.ranges.is_empty(),
        "{name} holds no valid entry; nothing published"
    );

    let database = Database::new(args.database.url(&args.keys.data_dir)?, 1)?;
    anyhow::ensure!(
        !database.has_pending_migrations().await?,
        "the database has pending migrations: run `mailconnect migrate` first"
    );
    // The default data center only matters to readers; this service only publishes.
    let service = AllowlistService::new(database, data_center.clone(), Arc::new(SystemClock));
    let operator = Principal {
        subject: "cli:allowlist-import".to_owned(),
        account_id: None,
        user_id: None,
        roles: vec![Role::Platform],
    };
    let published = service
        .import(&operator, data_center.clone(), protocol, report.ranges)
        .await?;
    if published.diff.is_empty() {
        println!(
            "{} {} unchanged at version {}",
            data_center.as_str(),
            protocol.as_str(),
            published.version
        );
    } else {
        println!(
            "published {} {} as version {} ({} added, {} removed)",
            data_center.as_str(),
            protocol.as_str(),
            published.version,
            published.diff.added.len(),
            published.diff.removed.len()
        );
        for added in &published.diff.added {
            println!("+ {added}");
        }
        for removed in &published.diff.removed {
            println!("- {removed}");
        }
    }
    Ok(())
}

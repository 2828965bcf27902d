//! The `mailconnect` command: serve, migrate, mint development tokens, manage allowlists, probe a
//! mail server.

use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use mailconnect::app::Application;
use mailconnect::commands::{self, allowlist::AllowlistCommand};
use mailconnect::config::{DatabaseSettings, KeySettings, LogFormat, Settings};
use mailconnect::domain::principal::{Principal, Role};
use mailconnect::probe::cli::ProbeArgs;
use mailconnect::service::allowlist::publish_initial_lists;
use mailconnect::service::clock::SystemClock;
use mailconnect::storage::Database;

#[derive(Parser)]
#[command(name = "mailconnect", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gRPC server.
    Serve(Box<Settings>),
    /// Apply pending database migrations and exit.
    Migrate {
        #[command(flatten)]
        keys: KeySettings,
        #[command(flatten)]
        database: DatabaseSettings,
    },
    /// Mint a development token signed with the configured (or development) secret.
    Token(TokenArgs),
    /// Manage the egress IP allowlists.
    Allowlist {
        #[command(subcommand)]
        command: AllowlistCommand,
    },
    /// Re-seal every stored mailbox credential under the first key of
    /// MAILCONNECT_ENCRYPTION_KEYS (resumable: run it again after a crash).
    RotateKeys(Box<commands::keys::RotateKeysArgs>),
    /// Check that an IMAP, SMTP or Exchange server answers, as the service would before accepting
    /// it: imap://host:993, smtps://host:465, https://host/EWS/Exchange.asmx, …
    Probe(Box<ProbeArgs>),
}

#[derive(clap::Args)]
struct TokenArgs {
    /// The account the token acts in (required except for --role platform).
    #[arg(long)]
    account: Option<i64>,
    /// The user the token acts as.
    #[arg(long)]
    user: Option<i64>,
    /// Roles to grant; repeat for several. `user` grants none.
    #[arg(long = "role", value_enum, default_value = "user")]
    roles: Vec<TokenRole>,
    /// How long the token is valid, e.g. 1h, 30m, 7d.
    #[arg(long, default_value = "1h", value_parser = mailconnect::config::parse_duration)]
    ttl: Duration,
    #[command(flatten)]
    keys: KeySettings,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum TokenRole {
    SuperAdmin,
    AccountAccess,
    User,
    Platform,
}

fn main() -> ExitCode {
    let command = match mailconnect::config::with_config_file(Cli::command()) {
        Ok(command) => command,
        Err(error) => {
            eprintln!("error: {error:#}");
            return ExitCode::from(2);
        }
    };
    let cli = match Cli::from_arg_matches(&command.get_matches()) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let done = match cli.command {
            Command::Serve(settings) => serve(*settings).await,
            Command::Migrate { keys, database } => migrate(keys, database).await,
            Command::Token(args) => token(args),
            Command::Allowlist { command } => commands::allowlist::run(command).await,
            Command::RotateKeys(args) => commands::keys::run(*args).await,
            // The probe's exit status says whether the server works.
            Command::Probe(args) => return Ok(mailconnect::probe::cli::run(*args).await),
        };
        done.map(|()| ExitCode::SUCCESS)
    });
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let telemetry = mailconnect::telemetry::init(settings.log_format)?;
    let result = run_server(settings).await;
    telemetry.shutdown();
    result
}

async fn run_server(settings: Settings) -> anyhow::Result<()> {
    let dev_hint = settings.keys.uses_dev_secret();
    let tls = settings.server.tls_enabled();
    let embedded = settings.database.database_url.is_none();
    let app = Application::build(settings.clone()).await?;
    if dev_hint && embedded && settings.migrate_on_start {
        let data_center = settings.default_data_center()?;
        if commands::dev::seed_directory(app.database(), data_center).await? {
            tracing::info!(
                "seeded the development directory: account 1 and its super admin, user 1"
            );
        }
    }
    let addr = app.local_addr();
    tracing::info!(%addr, tls, database = %app.database().url(), "mailconnect listening");
    if dev_hint && !tls {
        print_grpcurl_hint(&settings.keys, addr)?;
    }
    app.run_until_stopped(shutdown_signal()).await
}

/// Prints a ready-to-paste grpcurl session with a fresh super-admin token (development only).
fn print_grpcurl_hint(keys: &KeySettings, addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let token = keys.token_keys()?.mint(
        &Principal {
            subject: "user:1:1".to_owned(),
            account_id: Some(commands::dev::DEV_ACCOUNT),
            user_id: Some(commands::dev::DEV_USER),
            roles: vec![Role::SuperAdmin],
        },
        Duration::from_secs(12 * 3600),
    )?;
    let grpcurl = grpcurl_command();
    println!(
        "\nmailconnect is listening on {addr} (development secret in {dir}).\n\
         Try it with grpcurl (a super-admin token of account 1, valid 12 hours):\n\n\
         export TOKEN='{token}'\n\
         {grpcurl} -plaintext {addr} list\n\
         {grpcurl} -plaintext {addr} describe mailconnect.v1.DirectoryService\n\
         {grpcurl} -plaintext -H \"authorization: Bearer $TOKEN\" -d '{{\"account_id\": 1}}' {addr} mailconnect.v1.DirectoryService/ListUsers\n\
         {grpcurl} -plaintext -H \"authorization: Bearer $TOKEN\" -d '{{\"email_address\": \"ada@gmail.com\"}}' {addr} mailconnect.v1.DomainSettingsService/ResolveConnectionSettings\n\
         {grpcurl} -plaintext -H \"authorization: Bearer $TOKEN\" -d '{{\"format\": \"EXPORT_FORMAT_NGINX\"}}' {addr} mailconnect.v1.AllowlistService/ExportAllowlist\n\
         {grpcurl} -plaintext -H \"authorization: Bearer $TOKEN\" -d '{{\"inbox\": {{\"display_name\": \"Support\"}}}}' {addr} mailconnect.v1.InboxConnectionService/CreateInbox\n\
         {grpcurl} -plaintext -H \"authorization: Bearer $TOKEN\" -d '{{\"email_address\": \"admin@acme.example\", \"provider\": \"PROVIDER_GMAIL\", \"credentials\": {{\"oauth\": {{\"refresh_token\": \"1//example\", \"account_email\": \"admin@acme.example\"}}}}}}' {addr} mailconnect.v1.InboxConnectionService/ConnectPersonalInbox\n\
         {grpcurl} -plaintext -H \"authorization: Bearer $TOKEN\" {addr} mailconnect.v1.InboxConnectionService/ListConnections\n",
        dir = keys.data_dir.display(),
    );
    Ok(())
}

/// `grpcurl` when it is on PATH, else the project-local copy scripts/run installs.
fn grpcurl_command() -> String {
    let on_path = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("grpcurl").is_file()));
    let local = std::path::Path::new(".venv-tools/bin/grpcurl");
    if !on_path && local.is_file() {
        format!("./{}", local.display())
    } else {
        "grpcurl".to_owned()
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

async fn migrate(keys: KeySettings, database: DatabaseSettings) -> anyhow::Result<()> {
    let telemetry = mailconnect::telemetry::init(LogFormat::Text)?;
    let url = database.url(&keys.data_dir)?;
    let result = async {
        let database = Database::new(url, 1)?;
        let applied = database.migrate().await?;
        println!("applied {applied} migration(s) to {}", database.url());
        let published = publish_initial_lists(&database, &SystemClock).await?;
        if published > 0 {
            println!("published {published} initial allowlist(s)");
        }
        Ok(())
    }
    .await;
    telemetry.shutdown();
    result
}

fn token(args: TokenArgs) -> anyhow::Result<()> {
    let roles: Vec<Role> = args
        .roles
        .iter()
        .filter_map(|role| match role {
            TokenRole::SuperAdmin => Some(Role::SuperAdmin),
            TokenRole::AccountAccess => Some(Role::AccountAccess),
            TokenRole::Platform => Some(Role::Platform),
            TokenRole::User => None,
        })
        .collect();
    let platform = roles.contains(&Role::Platform);
    anyhow::ensure!(
        platform || args.account.is_some_and(|id| id > 0),
        "--account N (a positive id) is required unless --role platform"
    );
    anyhow::ensure!(
        args.user.is_none_or(|id| id > 0),
        "--user must be a positive id"
    );
    let subject = match (args.account, args.user) {
        (Some(account), Some(user)) => format!("user:{account}:{user}"),
        (Some(account), None) => format!("account:{account}"),
        _ => "platform".to_owned(),
    };
    let principal = Principal {
        subject,
        account_id: args.account,
        user_id: args.user,
        roles,
    };
    println!("{}", args.keys.token_keys()?.mint(&principal, args.ttl)?);
    Ok(())
}

//! Builds the whole application, so that `main` and the tests start it the same way:
//! `Application::build(settings) → local_addr() → run_until_stopped(shutdown)`.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::server::NamedService;
use tonic::service::interceptor::InterceptedService;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::config::Settings;
use crate::domain::connection::FailurePolicy;
use crate::domain::sealing::Keyring;
use crate::grpc::auth::{AuthInterceptor, FollowDirectory};
use crate::grpc::deadline::Deadline;
use crate::grpc::drain::DrainWatches;
use crate::grpc::gate::{Gate, Readiness};
use crate::grpc::health_port;
use crate::grpc::limits::LoadShed;
use crate::grpc::observe::RpcTelemetry;
use crate::grpc::policy::PolicyLayer;
use crate::grpc::proto::allowlist_service_server::AllowlistServiceServer;
use crate::grpc::proto::directory_service_server::DirectoryServiceServer;
use crate::grpc::proto::domain_settings_service_server::DomainSettingsServiceServer;
use crate::grpc::proto::inbox_connection_service_server::InboxConnectionServiceServer;
use crate::grpc::server::{connections, tls_connections};
use crate::grpc::tls::ReloadingTls;
use crate::grpc::{
    AllowlistApi, DirectoryApi, DomainSettingsApi, InboxConnectionApi, LIVENESS_SERVICE, proto,
};
use crate::outbound::oauth::OAuthClients;
use crate::outbound::relay::SmtpRelay;
use crate::probe::Probe;
use crate::service::allowlist::{AllowlistService, publish_initial_lists};
use crate::service::attempts::AttemptRecorder;
use crate::service::clock::{Clock, SystemClock};
use crate::service::directory::DirectoryService;
use crate::service::dispatcher::{Dispatcher, run_every};
use crate::service::domain_settings::DomainSettingsService;
use crate::service::identity::Identities;
use crate::service::inbox_connections::{
    CheckSchedule, CodeMailer, InboxConnectionService, Options, RelayMailer,
};
use crate::service::monitor::{Monitor, MonitorOptions};
use crate::storage::Database;
use crate::tokens::TokenKeys;

/// Services whose health follows the database.
const SERVED_SERVICES: &[&str] = &[
    "",
    <DirectoryServiceServer<DirectoryApi<Database>> as NamedService>::NAME,
    <AllowlistServiceServer<AllowlistApi<Database>> as NamedService>::NAME,
    <DomainSettingsServiceServer<DomainSettingsApi<Database, Probe>> as NamedService>::NAME,
    <InboxConnectionServiceServer<InboxApi> as NamedService>::NAME,
];

/// The InboxConnectionService as this application builds it.
type InboxApi = InboxConnectionApi<Database, Arc<Probe>, OAuthClients, Arc<DomainSettings>>;
type DomainSettings = DomainSettingsService<Database, Arc<Probe>>;

pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    health_listener: Option<TcpListener>,
    database: Database,
    keys: Arc<TokenKeys>,
    server: tonic::transport::Server,
    tls: Option<ReloadingTls>,
    settings: Settings,
    clock: Arc<dyn Clock>,
    /// `None` without a configured (or, on the embedded default, created) encryption key.
    credential_keys: Option<Keyring>,
    /// `None` without `MAILCONNECT_SMTP_RELAY_URL`: notifications are then only listed.
    relay: Option<Arc<SmtpRelay>>,
}

impl Application {
    /// Checks the configuration, opens the pool (lazily) and binds the listener. Nothing is created
    /// on disk when the configuration is wrong.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let url = settings.database.url(&settings.keys.data_dir)?;
        settings.default_data_center()?;
        let server = settings.server.builder()?;
        let tls = settings.server.tls()?;
        let keys = Arc::new(settings.keys.token_keys()?);
        let credential_keys = settings.inbox.keyring(&settings.keys.data_dir, &url)?;
        let relay = settings
            .inbox
            .smtp_relay_url
            .as_ref()
            .map(|url| SmtpRelay::new(url, &settings.inbox.notification_from).map(Arc::new))
            .transpose()?;
        let database = Database::new(url, settings.database.db_max_connections)?
            .with_read_cache(settings.cache_entries);
        crate::telemetry::observe_pool(&database);
        let listener = TcpListener::bind(settings.listen_addr)
            .await
            .with_context(|| format!("cannot listen on {}", settings.listen_addr))?;
        let local_addr = listener.local_addr()?;
        let health_listener = health_port::bind(settings.server.health_listen_addr).await?;
        Ok(Self {
            listener,
            local_addr,
            health_listener,
            database,
            keys,
            server,
            tls,
            settings,
            clock: Arc::new(SystemClock),
            credential_keys,
            relay,
        })
    }

    /// Runs the use cases on `clock` instead of the system's (tests move time by hand).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The plaintext health-only address, when configured.
    pub fn health_addr(&self) -> Option<SocketAddr> {
        self.health_listener
            .as_ref()
            .and_then(|listener| listener.local_addr().ok())
    }

    pub fn database(&self) -> &Database {
        &self.database
    }

    /// Serves until `shutdown` completes, then reports NOT_SERVING, stops accepting, lets
    /// in-flight calls finish for at most the grace period, and returns.
    pub async fn run_until_stopped(
        mut self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (reporter, health_service) = tonic_health::server::health_reporter();
        for service in SERVED_SERVICES {
            reporter
                .set_service_status(*service, ServingStatus::NotServing)
                .await;
        }
        reporter
            .set_service_status(LIVENESS_SERVICE, ServingStatus::Serving)
            .await;
        let (stopping_tx, stopping) = watch::channel(false);
        let readiness = Readiness::default();
        let readiness_task = tokio::spawn(track_readiness(
            self.database.clone(),
            self.settings.migrate_on_start,
            reporter.clone(),
            readiness.clone(),
            stopping.clone(),
        ));

        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // google.rpc error details, so that grpcurl shows ErrorInfo and BadRequest.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // google.rpc error details, so that grpcurl shows ErrorInfo and BadRequest.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;

        let auth = AuthInterceptor::new(self.keys.clone());
        let default_data_center = self.settings.default_data_center()?;
        let identities = Arc::new(Identities::new(
            self.database.clone(),
            Arc::clone(&self.clock),
        ));
        let directory = DirectoryApi::new(Arc::new(DirectoryService::new(
            self.database.clone(),
            default_data_center.clone(),
            Arc::clone(&identities),
        )));
        let allowlist_service = Arc::new(AllowlistService::new(
            self.database.clone(),
            default_data_center,
            Arc::clone(&self.clock),
        ));
        let allowlist = AllowlistApi::new(Arc::clone(&allowlist_service));
        let attempts = Arc::new(AttemptRecorder::new(self.database.clone()));
        let attempts_flusher = attempts.start_flusher(self.settings.attempts_flush_interval);
        // One probe, one set of budgets, for every use case that reaches mail servers.
        let probe = Arc::new(Probe::from_settings(&self.settings.probe));
        let domain_settings_service = Arc::new(DomainSettingsService::new(
            self.database.clone(),
            attempts,
            Arc::clone(&probe),
            Arc::clone(&self.clock),
        ));
        let domain_settings = DomainSettingsApi::new(Arc::clone(&domain_settings_service));
        let inbox_settings = &self.settings.inbox;
        let oauth = OAuthClients::from_settings(inbox_settings);
        let inbox_connections = InboxConnectionApi::new(Arc::new(InboxConnectionService::new(
            self.database.clone(),
            Arc::clone(&probe),
            oauth.clone(),
            domain_settings_service,
            Arc::clone(&self.clock),
            Options {
                keys: self.credential_keys.clone(),
                limits: inbox_settings.inbox_limits,
                schedule: CheckSchedule {
                    interval: inbox_settings.connection_check_interval,
                },
                hosted: inbox_settings.hosted_domains(),
                own_address: inbox_settings
                    .notification_from
                    .parse::<lettre::message::Mailbox>()
                    .map(|from| from.email.to_string())
                    .unwrap_or_default(),
                mailer: self.relay.clone().map(|relay| {
                    Arc::new(RelayMailer {
                        domain: relay.from_domain(),
                        relay,
                    }) as Arc<dyn CodeMailer>
                }),
            },
        )));
        let (workers_stop_tx, workers_stop) = watch::channel(false);
        let workers = self.start_workers(probe, oauth, workers_stop);

        let grace = self.settings.shutdown_grace;
        let drain_reporter = reporter.clone();
        let (drain_started_tx, drain_started) = tokio::sync::oneshot::channel::<()>();
        let (watches_end_tx, watches_end) = watch::channel(false);
        let signal = async move {
            shutdown.await;
            tracing::info!("shutting down: NOT_SERVING, draining in-flight calls");
            let _ = stopping_tx.send(true);
            // No new monitor or dispatcher rounds; the current ones finish and are joined.
            let _ = workers_stop_tx.send(true);
            // Streams would otherwise hold the drain open until the grace period ends.
            allowlist_service.stop_watchers();
            for service in SERVED_SERVICES {
                drain_reporter
                    .set_service_status(*service, ServingStatus::NotServing)
                    .await;
            }
            // Only now: open Health/Watch streams get NOT_SERVING before they are closed.
            let _ = watches_end_tx.send(true);
            let _ = drain_started_tx.send(());
        };

        let health_port = self
            .health_listener
            .map(|listener| health_port::spawn(listener, health_service.clone()));
        let limits = &self.settings.server;
        // Every mailconnect.v1 service: the message size limits, behind the bearer-token check
        // and the directory's say on that token. (The limits are methods of each generated
        // server, not of a trait, hence a macro.)
        macro_rules! guarded {
            ($server:ident, $api:expr) => {
                InterceptedService::new(
                    FollowDirectory::new(
                        $server::new($api)
                            .max_decoding_message_size(limits.max_recv_message_size)
                            .max_encoding_message_size(limits.max_send_message_size),
                        Arc::clone(&identities),
                    ),
                    auth.clone(),
                )
            };
        }
        let mut server = self
            .server
            .layer(PolicyLayer(RpcTelemetry::new()))
            .layer(PolicyLayer(DrainWatches::new(watches_end)))
            .layer(PolicyLayer(LoadShed::new(limits.max_concurrent_calls)))
            .layer(PolicyLayer(Gate::new(readiness)))
            .layer(PolicyLayer(Deadline::new(limits.request_timeout)));
        let router = server
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(guarded!(DirectoryServiceServer, directory))
            .add_service(guarded!(AllowlistServiceServer, allowlist))
            .add_service(guarded!(DomainSettingsServiceServer, domain_settings))
            .add_service(guarded!(InboxConnectionServiceServer, inbox_connections));
        let lifetime = limits.connection_lifetime();
        let tls_watch = self
            .tls
            .as_ref()
            .map(|tls| tls.watch(limits.tls_reload_interval));
        let server: Pin<Box<dyn Future<Output = Result<(), tonic::transport::Error>> + Send>> =
            match self.tls {
                Some(tls) => Box::pin(router.serve_with_incoming_shutdown(
                    tls_connections(self.listener, tls, lifetime),
                    signal,
                )),
                None => Box::pin(
                    router
                        .serve_with_incoming_shutdown(connections(self.listener, lifetime), signal),
                ),
            };
        tokio::pin!(server);
        let served = tokio::select! {
            result = &mut server => result.context("gRPC server failed"),
            () = async {
                if drain_started.await.is_ok() {
                    tokio::time::sleep(grace).await;
                } else {
                    std::future::pending::<()>().await;
                }
            } => {
                tracing::warn!(?grace, "grace period over, dropping remaining connections");
                Ok(())
            }
        };
        // The calls that counted attempts are over: nothing they counted is lost on a clean stop.
        attempts_flusher.stop().await;
        for worker in workers {
            let _ = worker.await;
        }
        // Every task and thread ends before this returns, the database's last: a thread still
        // inside libpq while `main` returns crashed the process in its exit handlers (issue 16).
        let side_tasks = [Some(readiness_task), health_port, tls_watch];
        for task in side_tasks.into_iter().flatten() {
            task.abort();
            let _ = task.await;
        }
        self.database.close().await;
        served
    }
}

impl Application {
    /// The connection monitor and, with a relay, the notification dispatcher: they run until
    /// `stop` turns true and are joined before the server returns.
    fn start_workers(
        &mut self,
        probe: Arc<Probe>,
        oauth: OAuthClients,
        stop: watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let inbox = &self.settings.inbox;
        let poll = inbox.background_poll_interval;
        let monitor = Arc::new(Monitor::new(
            self.database.clone(),
            probe,
            oauth,
            Arc::clone(&self.clock),
            self.credential_keys.clone(),
            MonitorOptions {
                policy: FailurePolicy {
                    threshold: inbox.connection_failure_threshold,
                    min_span: inbox.connection_failure_min_span,
                },
                interval: inbox.connection_check_interval,
                concurrency: usize::try_from(inbox.connection_check_concurrency).unwrap_or(1),
            },
        ));
        let mut workers = vec![tokio::spawn(run_every(
            "connection monitor",
            poll,
            stop.clone(),
            move || {
                let monitor = Arc::clone(&monitor);
                async move { monitor.run_once().await }
            },
        ))];
        if let Some(relay) = self.relay.take() {
            let domain = relay.from_domain();
            let dispatcher = Arc::new(Dispatcher::new(
                self.database.clone(),
                relay,
                Arc::clone(&self.clock),
                domain,
            ));
            workers.push(tokio::spawn(run_every(
                "notification dispatcher",
                poll,
                stop,
                move || {
                    let dispatcher = Arc::clone(&dispatcher);
                    async move { dispatcher.run_once().await }
                },
            )));
        }
        workers
    }
}

/// Reports SERVING once the database answers and is migrated, and follows it afterwards.
async fn track_readiness(
    database: Database,
    migrate: bool,
    reporter: HealthReporter,
    readiness: Readiness,
    stopping: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut ready = false;
    let mut following = false;
    loop {
        if *stopping.borrow() {
            return;
        }
        let check = async {
            database.ping().await?;
            if ready {
                return Ok(());
            }
            if migrate {
                let applied = database.migrate().await?;
                if applied > 0 {
                    tracing::info!(applied, "applied database migrations");
                }
            }
            if database.has_pending_migrations().await? {
                return Err(crate::storage::StoreError::Unavailable(
                    "migrations are pending: run `mailconnect migrate`".to_owned(),
                ));
            }
            if migrate {
                let published = publish_initial_lists(&database, &SystemClock).await?;
                if published > 0 {
                    tracing::info!(published, "published the initial allowlists");
                }
            }
            Ok(())
        };
        match check.await {
            Ok(()) => {
                if !ready && !following {
                    // The schema, and so the change triggers, exist from now on.
                    database.follow_changes().await;
                    following = true;
                }
                if !ready {
                    tracing::info!(database = %database.url(), "database ready: SERVING");
                }
                ready = true;
                backoff = Duration::from_secs(5);
            }
            Err(error) => {
                if ready {
                    tracing::warn!(%error, "database lost: NOT_SERVING");
                } else {
                    tracing::warn!(%error, "database not ready yet");
                }
                ready = false;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
        readiness.set(ready);
        if *stopping.borrow() {
            return;
        }
        let status = if ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for service in SERVED_SERVICES {
            reporter.set_service_status(*service, status).await;
        }
        // Shutdown may have reported NOT_SERVING while this loop reported SERVING.
        if *stopping.borrow() {
            for service in SERVED_SERVICES {
                reporter
                    .set_service_status(*service, ServingStatus::NotServing)
                    .await;
            }
            return;
        }
        tokio::time::sleep(backoff).await;
    }
}

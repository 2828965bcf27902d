//! The allowlist use cases: every user reads the egress ranges of the data center their account
//! is hosted in; the platform publishes them, one data center and protocol at a time.

mod seed;
mod watch;

use std::collections::BTreeSet;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use ipnet::IpNet;
use tokio::sync::{broadcast, mpsc};

pub use seed::{INITIAL_LISTS, InitialList, publish_initial_lists};

use super::ServiceError;
use crate::domain::allowlist::export::{AllowlistSnapshot, ExportFormat, Rendered, render};
use crate::domain::allowlist::index::RangeIndex;
use crate::domain::allowlist::{
    AllowlistChange, Diff, Protocol, PublishedRange, RangeRecord, etag, etag_version, parse_ranges,
    published_ranges,
};
use crate::domain::directory::DataCenterId;
use crate::domain::page::{decode_token, encode_token, page_size};
use crate::domain::principal::{Principal, Role};
use crate::domain::{FieldViolation, Violations};
use crate::service::StoreError;
use crate::service::clock::Clock;

/// A data center's stored list at its current version.
#[derive(Debug, Clone, Default)]
pub struct StoredList {
    /// 0 when nothing was ever published.
    pub version: i64,
    /// UTC microseconds of the current version's publication.
    pub update_time: Option<i64>,
    /// Every row, pending removals included.
    pub records: Vec<RangeRecord>,
}

/// A replacement of one data center's set for one protocol.
#[derive(Debug, Clone)]
pub struct Publication {
    pub data_center: DataCenterId,
    pub protocol: Protocol,
    pub ranges: BTreeSet<IpNet>,
    /// Publish only if this is the data center's current version.
    pub expected_version: Option<i64>,
    /// UTC microseconds; never before `publish_time`.
    pub effective_time: i64,
    pub publish_time: i64,
    /// Compute the diff, write nothing.
    pub validate_only: bool,
}

/// What the store did with a publication.
#[derive(Debug, Clone)]
pub enum PublishOutcome {
    /// A new version.
    Published(AllowlistChange),
    /// Nothing written: the set was identical, or validation only. `diff` is what would change.
    NotPublished { version: i64, diff: Diff },
    /// `expected_version` was not current.
    Stale { current_version: i64 },
}

/// Where allowlists are kept.
pub trait AllowlistStore: Send + Sync + 'static {
    /// The data center the directory says hosts the account, if the account is known.
    fn account_data_center(
        &self,
        account_id: i64,
    ) -> impl Future<Output = Result<Option<DataCenterId>, StoreError>> + Send;
    /// A data center's current version (0 if it was never published to).
    fn version(
        &self,
        data_center: &DataCenterId,
    ) -> impl Future<Output = Result<i64, StoreError>> + Send;
    /// One data center's list, read consistently with its version.
    fn list(
        &self,
        data_center: &DataCenterId,
    ) -> impl Future<Output = Result<Arc<StoredList>, StoreError>> + Send;
    /// A number that changes whenever any data center's ranges change.
    fn generation(&self) -> impl Future<Output = Result<i64, StoreError>> + Send;
    /// Every data center's rows, with the generation read before them.
    fn all_records(
        &self,
    ) -> impl Future<Output = Result<(i64, Vec<RangeRecord>), StoreError>> + Send;
    /// Changes of a data center with a version above `after`, oldest first, at most `limit`.
    fn changes_after(
        &self,
        data_center: &DataCenterId,
        after: i64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<AllowlistChange>, StoreError>> + Send;
    /// Whether anything was ever published for this data center and protocol.
    fn has_history(
        &self,
        data_center: &DataCenterId,
        protocol: Protocol,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Replaces the set atomically; concurrent publications of a data center take turns.
    fn publish(
        &self,
        publication: Publication,
    ) -> impl Future<Output = Result<PublishOutcome, StoreError>> + Send;
}

/// The ranges a reader asked for.
pub struct ReadRequest<'a> {
    /// Empty: the caller's own data center.
    pub data_center: &'a str,
    pub protocols: BTreeSet<Protocol>,
}

/// A publication as the caller sent it.
pub struct PublishInput<'a> {
    pub data_center: &'a str,
    pub protocol: Option<Protocol>,
    pub ranges: &'a [String],
    pub etag: &'a str,
    /// UTC microseconds; `None` means now. The transport's conversion may have failed already:
    /// its violation is reported with the others.
    pub effective_time: Result<Option<i64>, FieldViolation>,
    pub validate_only: bool,
}

/// The result of a publication.
#[derive(Debug, Clone)]
pub struct Published {
    pub version: i64,
    pub etag: String,
    pub diff: Diff,
}

/// A page of changes.
pub struct ChangePage {
    pub changes: Vec<AllowlistChange>,
    pub current_version: i64,
    pub next_page_token: String,
}

/// Where the data center of a read came from (GetAllowlistResponse.data_center_source).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataCenterSource {
    /// The directory's record of the caller's account.
    Account,
    /// The request named it.
    Requested,
    /// The default data center, for a caller without an account.
    Default,
    /// The default data center, because the directory does not know the caller's account.
    UnknownAccount,
}

/// A data center without any publication: how to publish is in the README ("Egress allowlists").
fn not_published(data_center: &DataCenterId) -> ServiceError {
    ServiceError::FailedPrecondition {
        reason: "ALLOWLIST_NOT_PUBLISHED",
        message: format!(
            "no allowlist was ever published for data center {dc}: an operator publishes one with \
             `mailconnect allowlist import --data-center {dc} --protocol smtp|imap FILE` or PublishRanges",
            dc = data_center.as_str()
        ),
        metadata: [("data_center".to_owned(), data_center.as_str().to_owned())].into(),
    }
}

pub struct AllowlistService<S> {
    store: S,
    default_data_center: DataCenterId,
    /// Changes published by this process, for watchers.
    changes: broadcast::Sender<AllowlistChange>,
    /// Set when the server stops: watchers end with UNAVAILABLE.
    stopping: tokio::sync::watch::Sender<bool>,
    /// CheckAddress's lookup structure and the store generation it was built from.
    index: RwLock<Option<(i64, Arc<RangeIndex>)>>,
    /// Held while the index is rebuilt.
    index_build: tokio::sync::Mutex<()>,
    clock: Arc<dyn Clock>,
}

impl<S: AllowlistStore> AllowlistService<S> {
    /// For the use-case tests (in storage, which holds the real store) to count its loads.
    #[cfg(test)]
    pub(crate) fn store(&self) -> &S {
        &self.store
    }

    pub fn new(store: S, default_data_center: DataCenterId, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            default_data_center,
            clock,
            changes: broadcast::channel(256).0,
            stopping: tokio::sync::watch::channel(false).0,
            index: RwLock::new(None),
            index_build: tokio::sync::Mutex::new(()),
        }
    }

    /// Ends every WatchAllowlist stream (server shutdown).
    pub fn stop_watchers(&self) {
        self.stopping.send_replace(true);
    }

    /// The data center a read applies to, and where it came from: the caller's account's, the
    /// default one for principals without a (known) account, or the one a platform caller names.
    async fn data_center_for(
        &self,
        principal: &Principal,
        requested: &str,
    ) -> Result<(DataCenterId, DataCenterSource), ServiceError> {
        let (own, source) = match principal.account_id {
            Some(account_id) => match self.store.account_data_center(account_id).await? {
                Some(hosting) => (hosting, DataCenterSource::Account),
                None => {
                    tracing::warn!(
                        account_id,
                        "an account the directory does not know read an allowlist: the default data center's"
                    );
                    (
                        self.default_data_center.clone(),
                        DataCenterSource::UnknownAccount,
                    )
                }
            },
            None => (self.default_data_center.clone(), DataCenterSource::Default),
        };
        if requested.is_empty() {
            return Ok((own, source));
        }
        let requested = DataCenterId::parse("data_center", requested)?;
        if requested == own && source == DataCenterSource::Account {
            Ok((requested, source))
        } else if requested == own || principal.is_platform() {
            Ok((requested, DataCenterSource::Requested))
        } else {
            Err(ServiceError::PermissionDenied {
                message: format!(
                    "your account is hosted in data center {}; reading another data center's allowlist requires the role platform",
                    own.as_str()
                ),
                required: vec![Role::Platform],
            })
        }
    }

    /// The current list of the caller's (or the named) data center; a data center that never
    /// had a publication is FAILED_PRECONDITION, not an empty list that reads "allow nothing".
    pub async fn snapshot(
        &self,
        principal: &Principal,
        request: ReadRequest<'_>,
    ) -> Result<(AllowlistSnapshot, DataCenterSource), ServiceError> {
        let (data_center, source) = self.data_center_for(principal, request.data_center).await?;
        let list = self.store.list(&data_center).await?;
        if list.version == 0 {
            return Err(not_published(&data_center));
        }
        let ranges = published_ranges(
            list.records
                .iter()
                .filter(|record| request.protocols.contains(&record.protocol)),
            self.clock.now_micros(),
        );
        let snapshot = AllowlistSnapshot {
            etag: etag(&data_center, list.version),
            data_center,
            version: list.version,
            update_time: list.update_time,
            protocols: request.protocols,
            ranges,
        };
        Ok((snapshot, source))
    }

    pub async fn export(
        &self,
        principal: &Principal,
        request: ReadRequest<'_>,
        format: ExportFormat,
        aggregate: bool,
    ) -> Result<(Rendered, i64, DataCenterSource), ServiceError> {
        let (snapshot, source) = self.snapshot(principal, request).await?;
        Ok((
            render(&snapshot, format, aggregate),
            snapshot.version,
            source,
        ))
    }

    /// Every range of any data center containing the address, current or upcoming.
    pub async fn check_address(&self, address: &str) -> Result<Vec<PublishedRange>, ServiceError> {
        let address: IpAddr = address
            .trim()
            .parse()
            .map_err(|_| ServiceError::InvalidValue {
                reason: "INVALID_IP_ADDRESS",
                violations: vec![FieldViolation::new(
                    "ip_address",
                    format!("{address:?} is not an IPv4 or IPv6 address, e.g. 143.244.82.13"),
                )],
            })?;
        let index = self.index().await?;
        let now = self.clock.now_micros();
        let mut ranges = published_ranges(index.containing(address), now);
        ranges.sort_by(|a, b| (&a.data_center, a.cidr).cmp(&(&b.data_center, b.cidr)));
        Ok(ranges)
    }

    /// The lookup structure, rebuilt only when the store's generation moved (a publication here
    /// or on another replica).
    async fn index(&self) -> Result<Arc<RangeIndex>, ServiceError> {
        let generation = self.store.generation().await?;
        if let Some(index) = self.index_at(generation) {
            return Ok(index);
        }
        // One build at a time: concurrent first calls would each load every range.
        let _building = self.index_build.lock().await;
        if let Some(index) = self.index_at(generation) {
            return Ok(index);
        }
        let (generation, records) = self.store.all_records().await?;
        let index = tokio::task::spawn_blocking(move || Arc::new(RangeIndex::new(records)))
            .await
            .map_err(|error| ServiceError::Internal(format!("index build failed: {error}")))?;
        *self.index.write().expect("index lock") = Some((generation, Arc::clone(&index)));
        Ok(index)
    }

    /// The built index if it is of this generation.
    fn index_at(&self, generation: i64) -> Option<Arc<RangeIndex>> {
        match self.index.read().expect("index lock").as_ref() {
            Some((built, index)) if *built == generation => Some(Arc::clone(index)),
            _ => None,
        }
    }

    /// Checks a (non-negative) `since_version`/`from_version` against the data center's current
    /// version, and returns the latter.
    async fn current_version_after(
        &self,
        data_center: &DataCenterId,
        field: &str,
        after: i64,
    ) -> Result<i64, ServiceError> {
        let current = self.store.version(data_center).await?;
        if after > current {
            return Err(ServiceError::OutOfRange {
                reason: "VERSION_AHEAD",
                message: format!(
                    "{field} {after} is newer than the current version {current} of data center {}",
                    data_center.as_str()
                ),
            });
        }
        Ok(current)
    }

    pub async fn list_changes(
        &self,
        principal: &Principal,
        data_center: &str,
        since_version: i64,
        page_size_requested: i32,
        page_token: &str,
    ) -> Result<ChangePage, ServiceError> {
        let (data_center, _) = self.data_center_for(principal, data_center).await?;
        let filter = format!("changes:{}:{since_version}", data_center.as_str());
        let mut violations = Violations::new();
        violations.check(non_negative("since_version", since_version));
        let size = violations.check(page_size("page_size", page_size_requested));
        let after = violations
            .check(decode_token("page_token", page_token, &filter))
            .flatten();
        let size = violations.finish(|| size.unwrap_or_default())?;
        let after = match after {
            Some(key) => key.parse::<i64>().map_err(|_| {
                ServiceError::invalid("page_token", "is not a page token of this list")
            })?,
            None => since_version,
        };
        let current_version = self
            .current_version_after(&data_center, "since_version", since_version)
            .await?;
        let mut changes = self
            .store
            .changes_after(&data_center, after, size + 1)
            .await?;
        let next_page_token = if changes.len() > size {
            changes.truncate(size);
            changes
                .last()
                .map(|last| encode_token(&last.version.to_string(), &filter))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(ChangePage {
            changes,
            current_version,
            next_page_token,
        })
    }

    /// Changes after `from_version`, then each new one, until the receiver is dropped or the
    /// server stops.
    pub async fn watch(
        self: &Arc<Self>,
        principal: &Principal,
        data_center: &str,
        from_version: i64,
    ) -> Result<mpsc::Receiver<Result<AllowlistChange, ServiceError>>, ServiceError> {
        non_negative("from_version", from_version)?;
        let (data_center, _) = self.data_center_for(principal, data_center).await?;
        // Subscribe before reading the history, so that nothing published in between is lost.
        let live = self.changes.subscribe();
        self.current_version_after(&data_center, "from_version", from_version)
            .await?;
        let (sender, receiver) = mpsc::channel(16);
        tokio::spawn(Arc::clone(self).stream_changes(data_center, from_version, live, sender));
        Ok(receiver)
    }

    pub async fn publish(
        &self,
        principal: &Principal,
        input: PublishInput<'_>,
    ) -> Result<Published, ServiceError> {
        ServiceError::require_any(&principal.roles, &[Role::Platform], "PublishRanges")?;
        let mut violations = Vec::new();
        let data_center = DataCenterId::parse("data_center", input.data_center)
            .map_err(|violation| violations.push(violation))
            .ok();
        if input.protocol.is_none() {
            violations.push(FieldViolation::new(
                "protocol",
                "is required: PROTOCOL_SMTP or PROTOCOL_IMAP",
            ));
        }
        let ranges = parse_ranges("ranges", input.ranges)
            .map_err(|bad| violations.extend(bad))
            .ok();
        let effective_time = input
            .effective_time
            .map_err(|violation| violations.push(violation))
            .ok();
        let (Some(data_center), Some(protocol), Some(ranges), Some(effective_time)) =
            (data_center, input.protocol, ranges, effective_time)
        else {
            // The contract's reason for bad entries, when they are all that is wrong.
            return Err(
                if violations.iter().all(|v| v.field.starts_with("ranges[")) {
                    ServiceError::InvalidValue {
                        reason: "INVALID_CIDR",
                        violations,
                    }
                } else {
                    ServiceError::InvalidArgument(violations)
                },
            );
        };
        let expected_version = if input.etag.is_empty() {
            None
        } else {
            Some(
                etag_version(&data_center, input.etag)
                    .ok_or_else(|| stale_etag(&data_center, input.etag))?,
            )
        };
        let now = self.clock.now_micros();
        let publication = Publication {
            data_center,
            protocol,
            ranges,
            expected_version,
            effective_time: effective_time.unwrap_or(now).max(now),
            publish_time: now,
            validate_only: input.validate_only,
        };
        self.publish_parsed(publication, input.etag).await
    }

    /// Publishes an already parsed set (PublishRanges, the import command, the initial lists).
    async fn publish_parsed(
        &self,
        publication: Publication,
        sent_etag: &str,
    ) -> Result<Published, ServiceError> {
        let data_center = publication.data_center.clone();
        match self.store.publish(publication).await? {
            PublishOutcome::Published(change) => {
                tracing::info!(
                    data_center = change.data_center.as_str(),
                    protocol = change.protocol.as_str(),
                    version = change.version,
                    added = change.diff.added.len(),
                    removed = change.diff.removed.len(),
                    "allowlist published"
                );
                let published = Published {
                    version: change.version,
                    etag: etag(&data_center, change.version),
                    diff: change.diff.clone(),
                };
                // No watcher in this process is not an error.
                let _ = self.changes.send(change);
                Ok(published)
            }
            PublishOutcome::NotPublished { version, diff } => Ok(Published {
                version,
                etag: etag(&data_center, version),
                diff,
            }),
            PublishOutcome::Stale { .. } => Err(stale_etag(&data_center, sent_etag)),
        }
    }

    /// Publishes a set read from a file (the import command), as a platform operator.
    pub async fn import(
        &self,
        principal: &Principal,
        data_center: DataCenterId,
        protocol: Protocol,
        ranges: BTreeSet<IpNet>,
    ) -> Result<Published, ServiceError> {
        ServiceError::require_any(&principal.roles, &[Role::Platform], "allowlist import")?;
        let now = self.clock.now_micros();
        self.publish_parsed(
            Publication {
                data_center,
                protocol,
                ranges,
                expected_version: None,
                effective_time: now,
                publish_time: now,
                validate_only: false,
            },
            "",
        )
        .await
    }
}

fn non_negative(field: &str, value: i64) -> Result<i64, FieldViolation> {
    if value >= 0 {
        Ok(value)
    } else {
        Err(FieldViolation::new(
            field,
            format!("must not be negative, got {value}"),
        ))
    }
}

fn stale_etag(data_center: &DataCenterId, sent: &str) -> ServiceError {
    ServiceError::Aborted {
        reason: "ETAG_MISMATCH",
        message: format!(
            "etag {sent:?} is not the current etag of data center {}'s allowlist: read it again (GetAllowlist) and retry",
            data_center.as_str()
        ),
    }
}

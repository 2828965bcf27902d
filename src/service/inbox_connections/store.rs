//! What the inbox and connection use cases need from storage. Every write that changes a
//! connection's state writes its notifications in the same transaction (the outbox).

use std::future::Future;
use std::time::SystemTime;

use crate::domain::channel::ChannelSettings;
use crate::domain::connection::{
    Connection, ConnectionKind, ConnectionState, DisconnectReason, Health, Usage,
};
use crate::domain::credentials::SealedCredentials;
use crate::domain::directory::{Account, Team, Tier, User};
use crate::domain::inbox::Inbox;
use crate::domain::notification::Notification;
use crate::service::StoreError;
use crate::service::domain_settings::WriteOutcome;

/// A position in a list ordered by creation: `(create_time micros, id)` of the last item.
pub type TimeKey = (i64, i64);

/// An idempotency key to record with a create (AIP-155).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub request_id: String,
    /// The method it was first used with.
    pub method: &'static str,
    /// What the first request asked for; a retry must ask for the same.
    pub fingerprint: String,
}

/// What a request id was first used for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRequest {
    pub method: String,
    pub fingerprint: String,
    pub resource_id: i64,
}

pub enum InboxInsert {
    Created(Inbox),
    /// The account has `limit` inboxes already.
    LimitReached,
    Replayed(StoredRequest),
}

pub enum InboxDelete {
    /// Deleted, with the team connections `force` deleted too.
    Done(Vec<Connection>),
    NotFound,
    Stale,
    /// Without `force`: this many connections are still channels of it.
    NotEmpty(usize),
}

/// A new connection, its sealed credentials, and what it replaces.
pub struct ConnectionInsert {
    pub connection: Connection,
    pub credentials: Option<SealedCredentials>,
    /// A connection of the same owner and address with another provider, at this version: it is
    /// disconnected (PROVIDER_MIGRATION) and stops holding the address in the same transaction.
    pub replaces: Option<(i64, i64)>,
    pub request: Option<RequestRecord>,
    /// When the monitor first checks it; `None` for connections it does not check.
    pub next_check_time: Option<SystemTime>,
}

pub enum ConnectionInsertOutcome {
    Created(Connection),
    /// Another connection holds the address (the unique index refused the insert).
    Held(Connection),
    /// The inbox of a team connection does not exist (any more).
    InboxMissing,
    /// The connection to replace changed or went away meanwhile.
    ReplacedChanged,
    Replayed(StoredRequest),
    /// Another channel (of any account) has the forwarding address.
    ForwardingTaken,
}

/// The directory entries a channel's routing names: the listed teams, and the listed users
/// with every member of those teams (deleted or not).
#[derive(Debug, Clone, Default)]
pub struct RoutingDirectory {
    pub users: Vec<User>,
    pub teams: Vec<Team>,
}

/// A change to one connection.
#[derive(Debug, Clone)]
pub enum ConnectionChange {
    /// DEACTIVATED, monitoring stopped; keeps everything else.
    Deactivate,
    /// ACTIVE again with new credentials, proved at `verified_at` (`None`: not provable).
    Reactivate {
        credentials: SealedCredentials,
        verified_at: Option<SystemTime>,
        next_check_time: Option<SystemTime>,
    },
    SetUsages(Vec<Usage>),
    /// A monitor check that leaves the state as it is (no new etag).
    Checked {
        health: Health,
        next_check_time: Option<SystemTime>,
    },
    /// The channel with its custom from address verified; the pending code is deleted.
    AddressVerified(ChannelSettings),
    /// New channel settings (and forwarding address) of a team connection. A forwarding address
    /// another connection holds makes the write fail with `StoreError::Conflict`.
    SetChannel(ChannelSettings),
    /// DISCONNECTED by the service; notifies as the proto says.
    Disconnect {
        reason: DisconnectReason,
        health: Health,
    },
}

/// A verification code waiting for VerifyAddress (only its salted hash is kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingCode {
    pub address: String,
    pub salt: Vec<u8>,
    pub code_hash: Vec<u8>,
    pub expire_time: SystemTime,
}

/// A new code for a connection's custom address: sent unless the address had too many.
pub struct CodeStart {
    pub account_id: i64,
    pub connection_id: i64,
    pub expected_version: i64,
    /// The channel with its custom address PENDING.
    pub channel: ChannelSettings,
    pub code: PendingCode,
    /// The lower-cased address the rate limit counts by.
    pub address_key: String,
    pub now: SystemTime,
    /// Codes sent since then count; `max_sends` of them refuse another.
    pub window_start: SystemTime,
    pub max_sends: i64,
}

pub enum CodeStartOutcome {
    Started(Box<Connection>),
    /// The address had `max_sends` codes in the window; the oldest of them was sent then.
    RateLimited {
        oldest: SystemTime,
    },
    Stale,
    NotFound,
}

/// Whether a guess at a connection's code may be checked.
pub enum AttemptOutcome {
    /// No code was sent (or the connection is gone).
    NotStarted,
    /// The code expired or its attempts are used up.
    Exhausted,
    /// The attempt is counted; check the guess against this.
    Claimed(PendingCode),
}

/// Which connections a list returns (filters combine with AND).
#[derive(Debug, Clone, Default)]
pub struct ConnectionFilter {
    pub kind: Option<ConnectionKind>,
    pub inbox_id: Option<i64>,
    pub owner_user_id: Option<i64>,
    pub state: Option<ConnectionState>,
    /// For plain users: only their own personal connections and every team connection.
    pub visible_to: Option<i64>,
}

pub trait InboxConnectionStore: Send + Sync + 'static {
    /// The account's tier in the directory, `None` when the directory does not know it.
    fn account_tier(
        &self,
        account_id: i64,
    ) -> impl Future<Output = Result<Option<Tier>, StoreError>> + Send;
    fn directory_account(
        &self,
        account_id: i64,
    ) -> impl Future<Output = Result<Option<Account>, StoreError>> + Send;
    fn routing_directory(
        &self,
        account_id: i64,
        user_ids: Vec<i64>,
        team_ids: Vec<i64>,
    ) -> impl Future<Output = Result<RoutingDirectory, StoreError>> + Send;
    fn directory_user(
        &self,
        account_id: i64,
        user_id: i64,
    ) -> impl Future<Output = Result<Option<User>, StoreError>> + Send;
    /// Users of the account whose login address is `address_key` (lower-case), deleted or not.
    fn users_with_address(
        &self,
        account_id: i64,
        address_key: String,
    ) -> impl Future<Output = Result<Vec<User>, StoreError>> + Send;
    fn find_request(
        &self,
        account_id: i64,
        request_id: String,
    ) -> impl Future<Output = Result<Option<StoredRequest>, StoreError>> + Send;

    /// Inserts the inbox unless the account has `limit` already, counted under a lock on the
    /// account so that concurrent creates cannot pass the limit together.
    fn insert_inbox(
        &self,
        inbox: Inbox,
        limit: u32,
        request: Option<RequestRecord>,
    ) -> impl Future<Output = Result<InboxInsert, StoreError>> + Send;
    fn get_inbox(
        &self,
        account_id: i64,
        id: i64,
    ) -> impl Future<Output = Result<Option<Inbox>, StoreError>> + Send;
    fn list_inboxes(
        &self,
        account_id: i64,
        after: Option<TimeKey>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Inbox>, StoreError>> + Send;
    fn rename_inbox(
        &self,
        account_id: i64,
        id: i64,
        display_name: String,
        expected_version: Option<i64>,
        now: SystemTime,
    ) -> impl Future<Output = Result<WriteOutcome<Inbox>, StoreError>> + Send;
    /// Deletes the inbox; with `force` its connections too (notifying as a delete does).
    fn delete_inbox(
        &self,
        account_id: i64,
        id: i64,
        expected_version: Option<i64>,
        force: bool,
        actor_user_id: i64,
    ) -> impl Future<Output = Result<InboxDelete, StoreError>> + Send;

    /// The connection holding the address in the account, if any.
    fn address_holder(
        &self,
        account_id: i64,
        address_key: String,
    ) -> impl Future<Output = Result<Option<Connection>, StoreError>> + Send;
    fn insert_connection(
        &self,
        insert: ConnectionInsert,
    ) -> impl Future<Output = Result<ConnectionInsertOutcome, StoreError>> + Send;
    fn get_connection(
        &self,
        account_id: i64,
        id: i64,
    ) -> impl Future<Output = Result<Option<Connection>, StoreError>> + Send;
    /// Ordered by creation, oldest first, after `after`, at most `limit`.
    fn list_connections(
        &self,
        account_id: i64,
        filter: ConnectionFilter,
        after: Option<TimeKey>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Connection>, StoreError>> + Send;
    /// Applies `change` if the version is `expected_version` (any when `None`).
    fn change_connection(
        &self,
        account_id: i64,
        id: i64,
        expected_version: Option<i64>,
        change: ConnectionChange,
        now: SystemTime,
    ) -> impl Future<Output = Result<WriteOutcome<Connection>, StoreError>> + Send;
    /// Deletes the connection and its credentials; a team connection's deletion notifies.
    fn delete_connection(
        &self,
        account_id: i64,
        id: i64,
        expected_version: Option<i64>,
        actor_user_id: i64,
    ) -> impl Future<Output = Result<WriteOutcome<Connection>, StoreError>> + Send;
    fn credentials(
        &self,
        account_id: i64,
        id: i64,
    ) -> impl Future<Output = Result<Option<SealedCredentials>, StoreError>> + Send;

    /// Stores a new code (replacing any earlier one) and the channel, counting the send
    /// against the address's limit; all or nothing.
    fn start_verification(
        &self,
        start: CodeStart,
    ) -> impl Future<Output = Result<CodeStartOutcome, StoreError>> + Send;
    /// Counts one attempt at the connection's code if it is still valid at `now` and has
    /// attempts left (atomically, whichever replica guesses).
    fn claim_attempt(
        &self,
        account_id: i64,
        connection_id: i64,
        now: SystemTime,
        max_attempts: i32,
    ) -> impl Future<Output = Result<AttemptOutcome, StoreError>> + Send;

    /// The user's notifications, newest first, before the id `before`, at most `limit`.
    fn list_notifications(
        &self,
        account_id: i64,
        user_id: i64,
        before: Option<i64>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Notification>, StoreError>> + Send;
}

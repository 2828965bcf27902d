//! Conversations inboxes: create (within the tier's limit), read, rename, delete.

use std::collections::BTreeMap;

use crate::domain::Violations;
use crate::domain::connection::parse_inbox_name;
use crate::domain::directory::Tier;
use crate::domain::inbox::{Inbox, parse_display_name};
use crate::domain::principal::Principal;
use crate::domain::time::to_micros;
use crate::service::ServiceError;
use crate::service::conditions;
use crate::service::domain_settings::WriteOutcome;
use crate::service::pagination::{Page, PageRequest, bad_token, paginate};

use super::store::InboxConnectionStore;
use super::store::{InboxDelete, InboxInsert, RequestRecord, TimeKey};
use super::{
    InboxConnectionService, SettingsResolver, TokenRefresher, account_of, admin_account,
    inbox_not_found, new_id, request_reused, stale,
};
use crate::service::probing::Prober;

const CREATE_INBOX: &str = "CreateInbox";

/// Decodes a page request over a list ordered by creation.
pub(super) fn time_page(
    page: &PageRequest<'_>,
    filter: &str,
) -> Result<(usize, Option<TimeKey>), ServiceError> {
    let (size, after) = page.decode(filter)?;
    let after = after
        .map(|key| {
            key.split_once(':')
                .and_then(|(time, id)| Some((time.parse().ok()?, id.parse().ok()?)))
                .ok_or_else(bad_token)
        })
        .transpose()?;
    Ok((size, after))
}

/// The page key of an item created at `time` with `id`.
pub(super) fn time_key(time: std::time::SystemTime, id: i64) -> String {
    format!("{}:{id}", to_micros(time))
}

impl<S, P, O, R> InboxConnectionService<S, P, O, R>
where
    S: InboxConnectionStore,
    P: Prober,
    O: TokenRefresher,
    R: SettingsResolver,
{
    pub async fn create_inbox(
        &self,
        principal: &Principal,
        display_name: &str,
        request_id: &str,
    ) -> Result<Inbox, ServiceError> {
        let account_id = admin_account(principal, CREATE_INBOX)?;
        let mut violations = Violations::new();
        let request_id = conditions::request_id(request_id);
        let display_name = violations.check(parse_display_name("inbox.display_name", display_name));
        let display_name = violations.finish(|| display_name.expect("checked"))?;
        let request = request_id?.map(|request_id| RequestRecord {
            request_id,
            method: CREATE_INBOX,
            fingerprint: display_name.clone(),
        });
        if let Some(request) = &request
            && let Some(first) = self
                .store
                .find_request(account_id, request.request_id.clone())
                .await?
        {
            return self.replayed_inbox(account_id, request, first).await;
        }
        let tier = self
            .store
            .account_tier(account_id)
            .await?
            .unwrap_or(Tier::Free);
        let limit = self.limits.limit(tier);
        let now = self.clock.now();
        let inbox = Inbox {
            id: new_id(),
            account_id,
            display_name,
            version: 1,
            created_by_user_id: principal.user_id.unwrap_or_default(),
            create_time: now,
            update_time: now,
        };
        match self
            .store
            .insert_inbox(inbox, limit, request.clone())
            .await?
        {
            InboxInsert::Created(inbox) => {
                tracing::info!(account_id, inbox = %inbox.name(), "inbox created");
                Ok(inbox)
            }
            InboxInsert::LimitReached => Err(ServiceError::FailedPrecondition {
                reason: "INBOX_LIMIT_REACHED",
                message: format!(
                    "the {} tier allows {limit} inbox(es) and the account has them all: delete one or upgrade",
                    tier.as_str()
                ),
                metadata: BTreeMap::from([
                    ("tier".to_owned(), tier.as_str().to_owned()),
                    ("limit".to_owned(), limit.to_string()),
                ]),
            }),
            InboxInsert::Replayed(first) => {
                let request = request.expect("only a request id replays");
                self.replayed_inbox(account_id, &request, first).await
            }
        }
    }

    async fn replayed_inbox(
        &self,
        account_id: i64,
        request: &RequestRecord,
        first: super::store::StoredRequest,
    ) -> Result<Inbox, ServiceError> {
        if first.method != request.method || first.fingerprint != request.fingerprint {
            return Err(request_reused(&first));
        }
        self.store
            .get_inbox(account_id, first.resource_id)
            .await?
            .ok_or_else(|| inbox_not_found(first.resource_id))
    }

    pub async fn get_inbox(
        &self,
        principal: &Principal,
        name: &str,
    ) -> Result<Inbox, ServiceError> {
        let account_id = account_of(principal)?;
        let id = parse_inbox_name("name", name)?;
        self.store
            .get_inbox(account_id, id)
            .await?
            .ok_or_else(|| inbox_not_found(id))
    }

    pub async fn list_inboxes(
        &self,
        principal: &Principal,
        page: PageRequest<'_>,
    ) -> Result<Page<Inbox>, ServiceError> {
        let account_id = account_of(principal)?;
        const FILTER: &str = "inboxes";
        let (size, after) = time_page(&page, FILTER)?;
        let inboxes = self.store.list_inboxes(account_id, after, size + 1).await?;
        Ok(paginate(inboxes, size, FILTER, |inbox| {
            time_key(inbox.create_time, inbox.id)
        }))
    }

    /// Renames an inbox; `mask` may be empty, `*` or `display_name`.
    pub async fn update_inbox(
        &self,
        principal: &Principal,
        name: &str,
        etag: &str,
        display_name: &str,
        mask: &[String],
    ) -> Result<Inbox, ServiceError> {
        let account_id = admin_account(principal, "UpdateInbox")?;
        let mut violations = Violations::new();
        let id = violations.check(parse_inbox_name("inbox.name", name));
        for (index, path) in mask.iter().enumerate() {
            if path != "*" && path != "display_name" {
                violations.add(
                    format!("update_mask.paths[{index}]"),
                    format!("{path:?} is not a writable field: use display_name"),
                );
            }
        }
        let display_name = violations.check(parse_display_name("inbox.display_name", display_name));
        let expected = conditions::expected_version("inbox.etag", etag);
        let (id, display_name) =
            violations.finish(|| (id.expect("checked"), display_name.expect("checked")))?;
        let expected = expected?;
        match self
            .store
            .rename_inbox(account_id, id, display_name, expected, self.clock.now())
            .await?
        {
            WriteOutcome::Done(inbox) => Ok(inbox),
            WriteOutcome::NotFound => Err(inbox_not_found(id)),
            WriteOutcome::Stale => Err(stale(name)),
        }
    }

    /// Deletes an inbox; with `force` its channels too. Returns how many channels went with it.
    pub async fn delete_inbox(
        &self,
        principal: &Principal,
        name: &str,
        etag: &str,
        force: bool,
    ) -> Result<usize, ServiceError> {
        let account_id = admin_account(principal, "DeleteInbox")?;
        let mut violations = Violations::new();
        let id = violations.check(parse_inbox_name("name", name));
        let expected = conditions::expected_version("etag", etag);
        let id = violations.finish(|| id.expect("checked"))?;
        let actor = principal.user_id.unwrap_or_default();
        match self
            .store
            .delete_inbox(account_id, id, expected?, force, actor)
            .await?
        {
            InboxDelete::Done(deleted) => {
                tracing::info!(
                    account_id,
                    inbox = name,
                    channels = deleted.len(),
                    "inbox deleted"
                );
                Ok(deleted.len())
            }
            InboxDelete::NotFound => Err(inbox_not_found(id)),
            InboxDelete::Stale => Err(stale(name)),
            InboxDelete::NotEmpty(channels) => Err(ServiceError::FailedPrecondition {
                reason: "INBOX_NOT_EMPTY",
                message: format!(
                    "{name} still has {channels} channel(s): delete them first, or delete with force to delete them too"
                ),
                metadata: BTreeMap::from([("channels".to_owned(), channels.to_string())]),
            }),
        }
    }
}

//! DirectoryService over gRPC: proto ⇄ domain conversion around the use cases.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::auth::principal;
use super::proto;
use super::proto::directory_service_server::DirectoryService as DirectoryRpc;
use crate::domain::FieldViolation;
use crate::domain::directory::{
    Account, AccountInput, Team, TeamInput, Tier, User, UserInput, UserRole,
};
use crate::service::ServiceError;
use crate::service::directory::{DirectoryService, DirectoryStore};
use crate::service::pagination::PageRequest;

pub struct DirectoryApi<S> {
    service: Arc<DirectoryService<S>>,
}

impl<S> DirectoryApi<S> {
    pub fn new(service: Arc<DirectoryService<S>>) -> Self {
        Self { service }
    }
}

fn tier_from_proto(value: i32) -> Option<Tier> {
    match proto::Tier::try_from(value).ok()? {
        proto::Tier::Unspecified => None,
        proto::Tier::Free => Some(Tier::Free),
        proto::Tier::Starter => Some(Tier::Starter),
        proto::Tier::Professional => Some(Tier::Professional),
        proto::Tier::Enterprise => Some(Tier::Enterprise),
    }
}

fn tier_to_proto(tier: Tier) -> proto::Tier {
    match tier {
        Tier::Free => proto::Tier::Free,
        Tier::Starter => proto::Tier::Starter,
        Tier::Professional => proto::Tier::Professional,
        Tier::Enterprise => proto::Tier::Enterprise,
    }
}

fn role_from_proto(value: i32) -> Option<UserRole> {
    match proto::Role::try_from(value).ok()? {
        proto::Role::Unspecified => None,
        proto::Role::SuperAdmin => Some(UserRole::SuperAdmin),
        proto::Role::AccountAccess => Some(UserRole::AccountAccess),
    }
}

fn role_to_proto(role: UserRole) -> proto::Role {
    match role {
        UserRole::SuperAdmin => proto::Role::SuperAdmin,
        UserRole::AccountAccess => proto::Role::AccountAccess,
    }
}

fn account_to_proto(account: Account) -> proto::Account {
    proto::Account {
        id: account.id,
        tier: tier_to_proto(account.tier).into(),
        data_center: account.data_center.as_str().to_owned(),
        subdomain: account.subdomain,
        sending_domains: account.sending_domains,
    }
}

fn user_to_proto(user: User) -> proto::User {
    proto::User {
        account_id: user.account_id,
        id: user.id,
        email: user.email.as_str().to_owned(),
        roles: user
            .roles
            .into_iter()
            .map(|role| role_to_proto(role).into())
            .collect(),
        deleted: user.deleted,
    }
}

fn team_to_proto(team: Team) -> proto::Team {
    proto::Team {
        account_id: team.account_id,
        id: team.id,
        name: team.name,
        member_user_ids: team.member_user_ids,
    }
}

/// A required message field that the caller left out.
fn required<T>(value: Option<T>, field: &str) -> Result<T, Status> {
    value.ok_or_else(|| ServiceError::from(FieldViolation::new(field, "is required")).into())
}

#[tonic::async_trait]
impl<S: DirectoryStore> DirectoryRpc for DirectoryApi<S> {
    async fn upsert_account(
        &self,
        request: Request<proto::UpsertAccountRequest>,
    ) -> Result<Response<proto::UpsertAccountResponse>, Status> {
        let principal = principal(&request)?;
        let account = required(request.into_inner().account, "account")?;
        let input = AccountInput {
            id: account.id,
            tier: tier_from_proto(account.tier),
            data_center: &account.data_center,
            subdomain: &account.subdomain,
            sending_domains: &account.sending_domains,
        };
        let account = self.service.upsert_account(&principal, input).await?;
        Ok(Response::new(proto::UpsertAccountResponse {
            account: Some(account_to_proto(account)),
        }))
    }

    async fn get_account(
        &self,
        request: Request<proto::GetAccountRequest>,
    ) -> Result<Response<proto::GetAccountResponse>, Status> {
        let principal = principal(&request)?;
        let account = self
            .service
            .get_account(&principal, request.get_ref().account_id)
            .await?;
        Ok(Response::new(proto::GetAccountResponse {
            account: Some(account_to_proto(account)),
        }))
    }

    async fn upsert_user(
        &self,
        request: Request<proto::UpsertUserRequest>,
    ) -> Result<Response<proto::UpsertUserResponse>, Status> {
        let principal = principal(&request)?;
        let user = required(request.into_inner().user, "user")?;
        let input = UserInput {
            account_id: user.account_id,
            id: user.id,
            email: &user.email,
            roles: user
                .roles
                .iter()
                .map(|&role| role_from_proto(role))
                .collect(),
        };
        let user = self.service.upsert_user(&principal, input).await?;
        Ok(Response::new(proto::UpsertUserResponse {
            user: Some(user_to_proto(user)),
        }))
    }

    async fn delete_user(
        &self,
        request: Request<proto::DeleteUserRequest>,
    ) -> Result<Response<proto::DeleteUserResponse>, Status> {
        let principal = principal(&request)?;
        let req = request.get_ref();
        let user = self
            .service
            .delete_user(&principal, req.account_id, req.user_id)
            .await?;
        Ok(Response::new(proto::DeleteUserResponse {
            user: Some(user_to_proto(user)),
        }))
    }

    async fn get_user(
        &self,
        request: Request<proto::GetUserRequest>,
    ) -> Result<Response<proto::GetUserResponse>, Status> {
        let principal = principal(&request)?;
        let req = request.get_ref();
        let user = self
            .service
            .get_user(&principal, req.account_id, req.user_id)
            .await?;
        Ok(Response::new(proto::GetUserResponse {
            user: Some(user_to_proto(user)),
        }))
    }

    async fn list_users(
        &self,
        request: Request<proto::ListUsersRequest>,
    ) -> Result<Response<proto::ListUsersResponse>, Status> {
        let principal = principal(&request)?;
        let req = request.get_ref();
        let page = self
            .service
            .list_users(
                &principal,
                req.account_id,
                req.show_deleted,
                PageRequest {
                    page_size: req.page_size,
                    page_token: &req.page_token,
                },
            )
            .await?;
        Ok(Response::new(proto::ListUsersResponse {
            users: page.items.into_iter().map(user_to_proto).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn upsert_team(
        &self,
        request: Request<proto::UpsertTeamRequest>,
    ) -> Result<Response<proto::UpsertTeamResponse>, Status> {
        let principal = principal(&request)?;
        let team = required(request.into_inner().team, "team")?;
        let input = TeamInput {
            account_id: team.account_id,
            id: team.id,
            name: &team.name,
            member_user_ids: &team.member_user_ids,
        };
        let team = self.service.upsert_team(&principal, input).await?;
        Ok(Response::new(proto::UpsertTeamResponse {
            team: Some(team_to_proto(team)),
        }))
    }

    async fn list_teams(
        &self,
        request: Request<proto::ListTeamsRequest>,
    ) -> Result<Response<proto::ListTeamsResponse>, Status> {
        let principal = principal(&request)?;
        let req = request.get_ref();
        let page = self
            .service
            .list_teams(
                &principal,
                req.account_id,
                PageRequest {
                    page_size: req.page_size,
                    page_token: &req.page_token,
                },
            )
            .await?;
        Ok(Response::new(proto::ListTeamsResponse {
            teams: page.items.into_iter().map(team_to_proto).collect(),
            next_page_token: page.next_page_token,
        }))
    }
}

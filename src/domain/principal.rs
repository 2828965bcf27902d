//! Who is calling: the identity a verified token carries.

/// A role a caller may hold. Plain users hold none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Super admin of their account.
    SuperAdmin,
    /// The "Account Access" permission of their account.
    AccountAccess,
    /// An internal service or operator: directory sync, allowlist publishing, inbound routing.
    Platform,
}

impl Role {
    /// The name used in tokens and error metadata.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::SuperAdmin => "super_admin",
            Role::AccountAccess => "account_access",
            Role::Platform => "platform",
        }
    }

    pub fn from_token(name: &str) -> Option<Role> {
        [Role::SuperAdmin, Role::AccountAccess, Role::Platform]
            .into_iter()
            .find(|role| role.as_str() == name)
    }
}

/// The authenticated caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's subject, for logs and audit.
    pub subject: String,
    /// The caller's account; `None` only for platform principals that act across accounts.
    pub account_id: Option<i64>,
    /// The caller's user id within the account, when the caller is a user.
    pub user_id: Option<i64>,
    pub roles: Vec<Role>,
}

impl Principal {
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    pub fn is_platform(&self) -> bool {
        self.has(Role::Platform)
    }

    /// Whether the caller may see records of `account_id`: its own account, or any as platform.
    pub fn can_read_account(&self, account_id: i64) -> bool {
        self.is_platform() || self.account_id == Some(account_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_read_only_their_own_account() {
        let user = Principal {
            subject: "user:1:7".into(),
            account_id: Some(1),
            user_id: Some(7),
            roles: vec![],
        };
        assert!(user.can_read_account(1));
        assert!(!user.can_read_account(2));
        let platform = Principal {
            roles: vec![Role::Platform],
            account_id: None,
            ..user
        };
        assert!(platform.can_read_account(2));
    }
}

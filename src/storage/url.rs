//! The database URL, parsed by scheme before anything is opened, so that a typo such as
//! `postgress://…` is an error and never a new empty SQLite file.

use std::fmt;
use std::path::PathBuf;

/// A database URL this service cannot use.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UrlError(String);

/// Which database to use, chosen by the URL's scheme.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// `postgres://…` or `postgresql://…`, passed to libpq as is.
    Postgres(String),
    /// `sqlite://PATH` (or `sqlite:PATH`): a file, created with its folder if missing.
    SqliteFile(PathBuf),
    /// `sqlite::memory:`: one private in-memory database (one connection).
    SqliteMemory,
}

impl DatabaseUrl {
    pub fn parse(raw: &str) -> Result<Self, UrlError> {
        let raw = raw.trim();
        if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
            return Ok(Self::Postgres(raw.to_owned()));
        }
        if raw == "sqlite::memory:" {
            return Ok(Self::SqliteMemory);
        }
        if let Some(path) = raw
            .strip_prefix("sqlite://")
            .or_else(|| raw.strip_prefix("sqlite:"))
            .filter(|path| !path.is_empty())
        {
            return Ok(Self::SqliteFile(PathBuf::from(path)));
        }
        let scheme = raw.split_once(':').map_or(raw, |(scheme, _)| scheme);
        Err(UrlError(format!(
            "unsupported database URL scheme {scheme:?}: use postgres://USER@HOST:PORT/DB, \
             postgresql://…, sqlite://PATH or sqlite::memory:"
        )))
    }

    /// The embedded default: a SQLite file in the data directory.
    pub fn default_in(data_dir: &std::path::Path) -> Self {
        Self::SqliteFile(data_dir.join("mailconnect.sqlite"))
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, Self::Postgres(_))
    }

    /// The OpenTelemetry `db.system.name` of the backend.
    pub fn system_name(&self) -> &'static str {
        if self.is_postgres() {
            "postgresql"
        } else {
            "sqlite"
        }
    }
}

/// Never prints a Postgres password: libpq takes one in the user info and as a query parameter.
impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Postgres(url) => f.write_str(&redacted(url)),
            Self::SqliteFile(path) => write!(f, "sqlite://{}", path.display()),
            Self::SqliteMemory => f.write_str("sqlite::memory:"),
        }
    }
}

/// `raw` with its password, and every query parameter that names one (`password`,
/// `sslpassword`), replaced by `***`. A URL the `url` crate cannot read (libpq's several
/// hosts) shows only its scheme: guessing where its password is would risk printing it.
fn redacted(raw: &str) -> String {
    let Ok(mut url) = url::Url::parse(raw) else {
        let scheme = raw
            .split_once("://")
            .map_or("postgres", |(scheme, _)| scheme);
        return format!("{scheme}://***");
    };
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    let secret = |key: &str| key.contains("password");
    if url.query_pairs().any(|(key, _)| secret(&key)) {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(key, value)| {
                let value = if secret(&key) { "***".into() } else { value };
                (key.into_owned(), value.into_owned())
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes() {
        assert!(
            DatabaseUrl::parse("postgres://u@h/db")
                .unwrap()
                .is_postgres()
        );
        assert!(
            DatabaseUrl::parse("postgresql://u@h/db")
                .unwrap()
                .is_postgres()
        );
        assert_eq!(
            DatabaseUrl::parse("sqlite://data/x.db").unwrap(),
            DatabaseUrl::SqliteFile("data/x.db".into())
        );
        assert_eq!(
            DatabaseUrl::parse("sqlite::memory:").unwrap(),
            DatabaseUrl::SqliteMemory
        );
        for bad in ["postgress://x", "mysql://x", "x.sqlite", "", "sqlite://"] {
            let err = DatabaseUrl::parse(bad).unwrap_err().to_string();
            assert!(
                err.contains("unsupported database URL scheme"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn display_hides_the_password() {
        let url = DatabaseUrl::parse("postgres://app:s3cret@db:5432/mail").unwrap();
        assert_eq!(url.to_string(), "postgres://app:***@db:5432/mail");
        let url = DatabaseUrl::parse("postgres://app@db/mail").unwrap();
        assert_eq!(url.to_string(), "postgres://app@db/mail");
        let url = DatabaseUrl::parse(
            "postgresql://app@db/mail?sslmode=require&password=s3cret&sslpassword=k3y",
        )
        .unwrap();
        assert_eq!(
            url.to_string(),
            "postgresql://app@db/mail?sslmode=require&password=***&sslpassword=***"
        );
        let url = DatabaseUrl::parse("postgres://app:s3cret@db1:5432,db2:5432/mail").unwrap();
        assert_eq!(url.to_string(), "postgres://***");
    }
}

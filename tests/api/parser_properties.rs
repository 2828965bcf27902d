//! Property tests of the parsers the API applies to what callers send, beside the probe's own in
//! `probe_properties`: email addresses, domain names, resource names, etags, page tokens and
//! update masks. Each either normalises to a form that parses to itself or refuses with the
//! field it was given; none panics.

use mailconnect::domain::Violations;
use mailconnect::domain::connection::{parse_connection_name, parse_inbox_name};
use mailconnect::domain::domain_name::DomainName;
use mailconnect::domain::domain_settings::{
    Choice, ImapInput, ServerInput, SettingsInput, UpdateError, apply_update, etag_of, parse_etag,
    parse_resource_name, resource_name,
};
use mailconnect::domain::email::EmailAddress;
use mailconnect::domain::page::{decode_token, encode_token, page_size};
use mailconnect::domain::probe::Security;
use proptest::prelude::*;

/// Text a caller might send: plausible shapes and arbitrary Unicode.
fn text(plausible: &'static str) -> impl Strategy<Value = String> {
    prop_oneof![plausible, "\\PC{0,80}", ".{0,40}"]
}

fn server(host: &str, port: u32) -> ServerInput {
    ServerInput {
        host: host.to_owned(),
        port,
        security: Choice::Value(Security::ImplicitTls),
    }
}

fn imap_input(host: &str) -> SettingsInput {
    SettingsInput::Imap(ImapInput {
        imap_server: Some(server(host, 993)),
        smtp_server: Some(server(host, 465)),
        allow_insecure_certificate: false,
    })
}

/// Mask paths: the known ones, near misses and noise.
fn mask_path() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "*",
            "imap",
            "imap.imap_server",
            "imap.smtp_server",
            "imap.allow_insecure_certificate",
            "exchange",
            "exchange.exchange_url",
            "exchange.scopes",
            "domain",
            "name",
            "etag",
            "",
            "imap.",
            ".imap",
            "IMAP",
        ])
        .prop_map(str::to_owned),
        "\\PC{0,30}",
    ]
}

proptest! {
    #[test]
    fn email_addresses_normalise_once(raw in text("[a-zA-Z0-9._%+-]{0,20}@[a-zA-Z0-9.-]{0,30}")) {
        match EmailAddress::parse("email_address", &raw) {
            Ok(email) => {
                prop_assert_eq!(EmailAddress::parse("email_address", email.as_str()), Ok(email.clone()));
                prop_assert_eq!(email.domain(), email.domain().to_ascii_lowercase());
            }
            Err(violation) => prop_assert_eq!(violation.field, "email_address"),
        }
    }

    #[test]
    fn domain_names_normalise_once(raw in text("[a-zA-Z0-9.äöü-]{0,70}")) {
        match DomainName::parse("domain", &raw) {
            Ok(domain) => {
                prop_assert_eq!(DomainName::parse("domain", domain.as_str()), Ok(domain.clone()));
                prop_assert!(domain.as_str().is_ascii() && domain.as_str().len() <= 253, "{}", domain);
                prop_assert_eq!(domain.as_str(), domain.as_str().to_ascii_lowercase());
                // The resource name built from it names it again.
                prop_assert_eq!(parse_resource_name("name", &resource_name(&domain)), Ok(domain.clone()));
            }
            Err(violation) => prop_assert_eq!(violation.field, "domain"),
        }
    }

    #[test]
    fn resource_names_are_exact(raw in text("(inboxes|connections|domainSettings)/[0-9a-z.+-]{0,12}"), id in 1i64..) {
        for parse in [parse_connection_name, parse_inbox_name] {
            match parse("name", &raw) {
                Ok(parsed) => {
                    prop_assert!(parsed > 0);
                    prop_assert!(raw.ends_with(&format!("/{parsed}")), "{raw:?} → {parsed}");
                }
                Err(violation) => prop_assert_eq!(violation.field, "name"),
            }
        }
        prop_assert_eq!(parse_inbox_name("name", &format!("inboxes/{id}")), Ok(id));
        prop_assert_eq!(parse_connection_name("name", &format!("connections/{id}")), Ok(id));
        if let Err(violation) = parse_resource_name("name", &raw) {
            prop_assert_eq!(violation.field, "name");
        }
    }

    #[test]
    fn etags_round_trip(version in any::<i64>(), raw in text("\"?[0-9a-z-]{0,20}\"?")) {
        prop_assert_eq!(parse_etag(&etag_of(version)), Some(version));
        if let Some(version) = parse_etag(&raw) {
            prop_assert_eq!(parse_etag(&etag_of(version)), Some(version));
        }
    }

    /// A token decodes to its key only with the filter it was made for; anything else a caller
    /// sends is refused with the field named (an empty token is the first page).
    #[test]
    fn page_tokens_round_trip_and_refuse_the_rest(
        key in "\\PC{0,40}",
        filter in "[a-z:0-9]{1,20}",
        other in "[a-z:0-9]{1,20}",
        raw in text("[A-Za-z0-9_-]{0,60}"),
        size in any::<i32>(),
    ) {
        let token = encode_token(&key, &filter);
        prop_assert_eq!(decode_token("page_token", &token, &filter), Ok(Some(key)));
        if other != filter {
            prop_assert_eq!(decode_token("page_token", &token, &other).unwrap_err().field, "page_token");
        }
        match decode_token("page_token", &raw, &filter) {
            Ok(None) => prop_assert!(raw.is_empty()),
            // Only a token made for this filter gets here.
            Ok(Some(_)) => {}
            Err(violation) => prop_assert_eq!(violation.field, "page_token"),
        }
        match page_size("page_size", size) {
            Ok(n) => prop_assert!(size >= 0 && (1..=1000).contains(&n)),
            Err(violation) => {
                prop_assert!(size < 0);
                prop_assert_eq!(violation.field, "page_size");
            }
        }
    }

    /// Any update mask on IMAP settings: the new settings, a kind mismatch only when a path asks
    /// for Exchange, or violations naming mask entries and request fields only.
    #[test]
    fn update_masks_apply_or_name_their_paths(
        paths in prop::collection::vec(mask_path(), 0..6),
        host in text("[a-z0-9.-]{1,30}"),
    ) {
        let mut violations = Violations::new();
        let existing = imap_input("imap.example.com").parse("domain_settings", &mut violations);
        let existing = existing.expect("valid settings");
        match apply_update(&existing, &imap_input(&host), &paths) {
            Ok(next) => prop_assert_eq!(next.kind(), existing.kind()),
            Err(UpdateError::KindMismatch { .. }) => {
                prop_assert!(paths.iter().any(|path| path.starts_with("exchange")), "{:?}", paths);
            }
            Err(UpdateError::Invalid(violations)) => {
                prop_assert!(!violations.is_empty());
                for violation in violations {
                    let mask_entry = (0..paths.len())
                        .any(|index| violation.field == format!("update_mask.paths[{index}]"));
                    prop_assert!(
                        mask_entry || violation.field.starts_with("domain_settings."),
                        "{:?} for {:?}", violation.field, paths
                    );
                }
            }
        }
    }
}

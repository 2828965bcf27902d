//! Test credentials keep to `common.proto`'s `PasswordCredentials`: a line break in a username
//! never reaches a server's LOGIN or AUTH, and every violation is named (issue 16, 11).

use mailconnect::domain::principal::Role;
use mailconnect::grpc::proto::domain_settings_service_client::DomainSettingsServiceClient;
use mailconnect::grpc::proto::{
    DomainSettings, ImapSettings, PasswordCredentials, ProbeDomainSettingsRequest, Security,
    ServerAddress, domain_settings::Settings,
};

use crate::fault_servers::{Fault, FaultServer};
use crate::harness::{Backend, authed, spawn_app, violated_fields};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_test_credentials_are_refused_before_any_connection() {
    let server = FaultServer::start(Fault::ImapWithoutStartTls).await;
    let app = spawn_app(Backend::Sqlite).await;
    let mut client = DomainSettingsServiceClient::new(app.channel.clone());
    let admin = app.user_token(1, 7, &[Role::SuperAdmin]);
    let address = ServerAddress {
        host: "127.0.0.1".into(),
        port: server.port.into(),
        security: Security::Plaintext.into(),
    };
    let probe = |username: &str, password: &str| ProbeDomainSettingsRequest {
        domain_settings: Some(DomainSettings {
            domain: "acme.example".into(),
            settings: Some(Settings::Imap(ImapSettings {
                imap_server: Some(address.clone()),
                smtp_server: Some(address.clone()),
                allow_insecure_certificate: false,
            })),
            ..Default::default()
        }),
        test_credentials: Some(PasswordCredentials {
            username: username.into(),
            password: password.into(),
        }),
    };
    let too_long = "u".repeat(321);
    let too_big = "p".repeat(1025);
    for (username, password, fields) in [
        (
            "jane\r\nA1 LOGOUT",
            "secret",
            vec!["test_credentials.username"],
        ),
        (
            too_long.as_str(),
            "secret",
            vec!["test_credentials.username"],
        ),
        ("jane", "", vec!["test_credentials.password"]),
        ("jane", too_big.as_str(), vec!["test_credentials.password"]),
        (
            "jane\n",
            "pass\rword",
            vec!["test_credentials.username", "test_credentials.password"],
        ),
    ] {
        let status = client
            .probe_domain_settings(authed(&admin, probe(username, password)))
            .await
            .unwrap_err();
        assert_eq!(violated_fields(&status), fields, "{username:?}");
    }
    assert_eq!(server.accepted(), 0, "a refused request reached the server");
}

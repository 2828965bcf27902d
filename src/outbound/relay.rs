//! The SMTP relay that mails notifications (lettre), from `MAILCONNECT_SMTP_RELAY_URL`.

use lettre::message::{Mailbox, header::ContentType};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::domain::secret::Secret;
use crate::service::dispatcher::{MailRelay, OutgoingMail, RelayError};

pub struct SmtpRelay {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl SmtpRelay {
    /// `url` in lettre's forms (`smtp://host:25`, `smtp://host:587?tls=required`,
    /// `smtps://host:465`, with optional `user:pass@`); `from` as `Name <address>` or an address.
    pub fn new(url: &Secret, from: &str) -> anyhow::Result<Self> {
        // lettre's own error would echo the URL, and with it the relay's password.
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url.expose())
            .map_err(|_| {
                anyhow::anyhow!(
                    "MAILCONNECT_SMTP_RELAY_URL is not an SMTP URL: use smtp://host:25, smtp://host:587?tls=required or smtps://host:465"
                )
            })?
            .build();
        let from = from.parse().map_err(|error| {
            anyhow::anyhow!("MAILCONNECT_NOTIFICATION_FROM {from:?} is not an address: {error}")
        })?;
        Ok(Self { transport, from })
    }

    /// The domain of the From address, for Message-IDs.
    pub fn from_domain(&self) -> String {
        self.from.email.domain().to_owned()
    }
}

impl MailRelay for SmtpRelay {
    async fn send(&self, mail: OutgoingMail) -> Result<(), RelayError> {
        let to: Mailbox = mail
            .to
            .parse()
            .map_err(|error| RelayError::Permanent(format!("recipient {:?}: {error}", mail.to)))?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(mail.subject)
            .message_id(Some(format!("<{}>", mail.message_id)))
            .header(ContentType::TEXT_PLAIN)
            .body(mail.body)
            .map_err(|error| RelayError::Permanent(error.to_string()))?;
        match self.transport.send(message).await {
            Ok(_) => Ok(()),
            Err(error) if error.is_permanent() => Err(RelayError::Permanent(error.to_string())),
            Err(error) => Err(RelayError::Temporary(error.to_string())),
        }
    }
}

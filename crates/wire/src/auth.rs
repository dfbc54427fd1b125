//! Authentication: trust for password-less users on loopback, otherwise SCRAM-SHA-256 (or MD5
//! for old drivers) against the verifiers stored in the catalog. Each connection gets its own
//! handler, so the SASL and MD5 exchanges keep per-connection state.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion_postgres::pgwire::api::auth::md5pass::Md5PasswordAuthStartupHandler;
use datafusion_postgres::pgwire::api::auth::sasl::SASLAuthStartupHandler;
use datafusion_postgres::pgwire::api::auth::sasl::scram::{ScramAuth, gen_salted_password};
use datafusion_postgres::pgwire::api::auth::{
    AuthSource, DefaultServerParameterProvider, LoginInfo, Password, StartupHandler,
    finish_authentication, protocol_negotiation, save_startup_parameters_to_metadata,
};
use datafusion_postgres::pgwire::api::{ClientInfo, PgWireConnectionState};
use datafusion_postgres::pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use datafusion_postgres::pgwire::messages::startup::PasswordMessageFamily;
use datafusion_postgres::pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use futures::Sink;
use tokio::sync::Mutex;
use tributary_catalog::StoredPassword;
use tributary_sql::Engine;

/// SCRAM iteration count for stored verifiers (Postgres's default).
const SCRAM_ITERATIONS: usize = 4096;

/// How clients with a password prove it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PasswordMethod {
    #[default]
    ScramSha256,
    /// For drivers that predate SCRAM.
    Md5,
}

/// Computes the verifiers stored for a password; the password itself is never stored.
pub fn password_verifiers(user: &str, password: &str) -> StoredPassword {
    let salt: [u8; 16] = rand::random();
    let salted = gen_salted_password(password, &salt, SCRAM_ITERATIONS);
    StoredPassword {
        scram_salted_hex: hex::encode(salted),
        scram_salt_hex: hex::encode(salt),
        scram_iterations: SCRAM_ITERATIONS as u32,
        md5_hex: format!("{:x}", md5::compute(format!("{password}{user}"))),
    }
}

/// True if `password` is the one `stored` was computed from (for logins outside the
/// protocol, such as the HTTP console's). Compares in constant time.
pub fn check_password(stored: &StoredPassword, password: &str) -> bool {
    let (Ok(salt), Ok(expected)) = (
        hex::decode(&stored.scram_salt_hex),
        hex::decode(&stored.scram_salted_hex),
    ) else {
        return false;
    };
    let salted = gen_salted_password(password, &salt, stored.scram_iterations as usize);
    salted.len() == expected.len()
        && salted
            .iter()
            .zip(&expected)
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

/// The parameters sent after authentication. Drivers parse `server_version` as a number.
pub fn server_parameters() -> DefaultServerParameterProvider {
    let mut parameters = DefaultServerParameterProvider::default();
    parameters.server_version = "8.0.2".to_string();
    parameters.search_path = "$user, public".to_string();
    parameters
}

fn login_error(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".to_string(),
        code.to_string(),
        message,
    )))
}

/// Looks up verifiers in the catalog.
#[derive(Debug)]
struct CatalogAuthSource {
    engine: Arc<Engine>,
    method: PasswordMethod,
}

#[async_trait]
impl AuthSource for CatalogAuthSource {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        let user = login.user().unwrap_or_default();
        let snapshot = self.engine.catalog_snapshot();
        let stored = snapshot
            .users
            .get(user)
            .and_then(|u| u.password.clone())
            .ok_or_else(|| PgWireError::InvalidPassword(user.to_string()))?;
        let decode = |h: &str| hex::decode(h).map_err(|e| PgWireError::ApiError(Box::new(e)));
        match self.method {
            PasswordMethod::ScramSha256 => Ok(Password::new(
                Some(decode(&stored.scram_salt_hex)?),
                decode(&stored.scram_salted_hex)?,
            )),
            PasswordMethod::Md5 => {
                let salt: [u8; 4] = rand::random();
                let mut bytes = stored.md5_hex.into_bytes();
                bytes.extend_from_slice(&salt);
                let expected = format!("md5{:x}", md5::compute(bytes));
                Ok(Password::new(Some(salt.to_vec()), expected.into_bytes()))
            }
        }
    }
}

enum Mode {
    Undecided,
    /// The handler, and whether the client's first SASL message has been read.
    Scram(SASLAuthStartupHandler<DefaultServerParameterProvider>, bool),
    Md5(Md5PasswordAuthStartupHandler<CatalogAuthSource, DefaultServerParameterProvider>),
}

/// One connection's authentication.
pub struct Startup {
    engine: Arc<Engine>,
    method: PasswordMethod,
    mode: Mutex<Mode>,
}

impl Startup {
    pub fn new(engine: Arc<Engine>, method: PasswordMethod) -> Self {
        Self {
            engine,
            method,
            mode: Mutex::new(Mode::Undecided),
        }
    }

    fn password_handler(&self) -> Mode {
        let source = Arc::new(CatalogAuthSource {
            engine: self.engine.clone(),
            method: self.method,
        });
        let parameters = Arc::new(server_parameters());
        match self.method {
            PasswordMethod::ScramSha256 => {
                let mut scram = ScramAuth::new(source);
                scram.set_iterations(SCRAM_ITERATIONS);
                Mode::Scram(
                    SASLAuthStartupHandler::new(parameters).with_scram(scram),
                    false,
                )
            }
            PasswordMethod::Md5 => {
                Mode::Md5(Md5PasswordAuthStartupHandler::new(source, parameters))
            }
        }
    }
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let mut mode = self.mode.lock().await;
        if let (Mode::Undecided, PgWireFrontendMessage::Startup(startup)) = (&*mode, &message) {
            let user = startup.parameters.get("user").cloned().unwrap_or_default();
            let snapshot = self.engine.catalog_snapshot();
            let Some(account) = snapshot.users.get(&user) else {
                return Err(login_error(
                    "28000",
                    format!("role \"{user}\" does not exist"),
                ));
            };
            let database = startup
                .parameters
                .get("database")
                .cloned()
                .unwrap_or_else(|| user.clone());
            if !snapshot.databases.contains_key(&database) {
                return Err(login_error(
                    "3D000",
                    format!("database \"{database}\" does not exist"),
                ));
            }
            if account.password.is_some() {
                *mode = self.password_handler();
            } else {
                if !client.socket_addr().ip().is_loopback() {
                    return Err(login_error(
                        "28000",
                        format!(
                            "user \"{user}\" has no password, so it may connect only from this machine"
                        ),
                    ));
                }
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                finish_authentication(client, &server_parameters()).await?;
                return Ok(());
            }
        }
        if let (
            Mode::Scram(_, initial_seen),
            PgWireFrontendMessage::PasswordMessageFamily(PasswordMessageFamily::Raw(body)),
        ) = (&mut *mode, &message)
        {
            // pgwire reads the first SASL message's fields without bounds checks; its
            // structure is checked here, where it is known to be the first.
            if !*initial_seen && !crate::frames::is_sasl_initial_response(body) {
                return Err(login_error(
                    "08P01",
                    "malformed SASLInitialResponse message".to_string(),
                ));
            }
            *initial_seen = true;
        }
        match &*mode {
            Mode::Scram(handler, _) => handler.on_startup(client, message).await,
            Mode::Md5(handler) => handler.on_startup(client, message).await,
            Mode::Undecided => Ok(()),
        }
    }
}

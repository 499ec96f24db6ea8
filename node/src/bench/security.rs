//! `cairn bench --cacert/--cert/--key/--user`: the client side of TLS and of etcd's auth,
//! with etcdctl's flag names, so the same run measures an https (and auth-enabled) etcd
//! and cairn. With `--user name:password` the benchmark calls `Authenticate` once, as
//! etcdctl does, and sends the token in the `token` metadata of every KV request.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::proto::etcdserverpb::{auth_client::AuthClient, AuthenticateRequest};

/// etcdctl's transport security flags.
#[derive(Debug, Args, Clone, Default, PartialEq, Eq)]
pub struct SecurityArgs {
    /// Verify https servers with this CA bundle (endpoints without a scheme then use https).
    #[arg(long, global = true)]
    pub cacert: Option<PathBuf>,
    /// Identify with this TLS client certificate (with --key).
    #[arg(long, global = true, requires = "key")]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key.
    #[arg(long, global = true, requires = "cert")]
    pub key: Option<PathBuf>,
    /// `name:password`: authenticate once and send the token with every KV request.
    #[arg(long, global = true)]
    pub user: Option<String>,
}

/// The loaded flags.
#[derive(Debug, Clone, Default)]
pub struct Security {
    tls: Option<ClientTlsConfig>,
    user: Option<(String, String)>,
}

impl SecurityArgs {
    /// Reads the files, naming the flag of one that cannot be read.
    pub fn load(&self) -> anyhow::Result<Security> {
        let read = |flag: &str, path: &PathBuf| {
            std::fs::read(path).with_context(|| format!("--{flag} {}", path.display()))
        };
        let tls = match (&self.cacert, &self.cert, &self.key) {
            (None, None, None) => None,
            (ca, cert, key) => {
                let mut tls = ClientTlsConfig::new();
                if let Some(ca) = ca {
                    tls = tls.ca_certificate(Certificate::from_pem(read("cacert", ca)?));
                }
                if let (Some(cert), Some(key)) = (cert, key) {
                    tls = tls.identity(Identity::from_pem(read("cert", cert)?, read("key", key)?));
                }
                Some(tls)
            }
        };
        let user = match &self.user {
            None => None,
            Some(pair) => {
                let (name, password) = pair
                    .split_once(':')
                    .context("--user must be name:password")?;
                Some((name.to_string(), password.to_string()))
            }
        };
        Ok(Security { tls, user })
    }
}

impl Security {
    /// The endpoint for `endpoint` (`host:port` or a URL), over TLS when configured.
    pub fn endpoint(&self, endpoint: &str) -> anyhow::Result<Endpoint> {
        let url = match (endpoint.contains("://"), &self.tls) {
            (true, _) => endpoint.to_string(),
            (false, Some(_)) => format!("https://{endpoint}"),
            (false, None) => format!("http://{endpoint}"),
        };
        let mut ep =
            Endpoint::from_shared(url).with_context(|| format!("bad endpoint {endpoint:?}"))?;
        if let Some(tls) = &self.tls {
            ep = ep
                .tls_config(tls.clone())
                .with_context(|| format!("TLS for {endpoint}"))?;
        }
        Ok(ep)
    }

    /// The auth token for `--user`, from one `Authenticate` call; `None` without it.
    pub async fn token(&self, channel: &Channel) -> anyhow::Result<Option<MetadataValue<Ascii>>> {
        let Some((name, password)) = &self.user else {
            return Ok(None);
        };
        let response = AuthClient::new(channel.clone())
            .authenticate(AuthenticateRequest {
                name: name.clone(),
                password: password.clone(),
            })
            .await
            .with_context(|| format!("authenticating as {name:?}"))?;
        let token = response.into_inner().token;
        Ok(Some(
            token.parse().context("the server's token is not ASCII")?,
        ))
    }
}

//! systemd's readiness protocol (`sd_notify`), for `Type=notify` units: `READY=1` once the
//! member serves clients, `STOPPING=1` when it starts to shut down. The socket is named by
//! `NOTIFY_SOCKET`, which systemd sets for the service (the one variable besides `CAIRN_LOG`
//! read outside `config/`: it belongs to the service manager, not to the configuration).
//! Without it every call does nothing, as etcd's `daemon.SdNotify` does.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends `state` (e.g. `READY=1`) to the service manager. `Ok(false)`: no manager listens.
pub fn notify(state: &str) -> io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let path = path.to_string_lossy().into_owned();
    let addr = match path.strip_prefix('@') {
        // Linux's abstract namespace, which systemd uses for some services.
        Some(name) => {
            use std::os::linux::net::SocketAddrExt as _;
            SocketAddr::from_abstract_name(name.as_bytes())?
        }
        None => SocketAddr::from_pathname(&path)?,
    };
    let socket = UnixDatagram::unbound()?;
    socket.send_to_addr(state.as_bytes(), &addr)?;
    Ok(true)
}

/// etcd's `notifySystemd`: tells the service manager the member is ready, logging the
/// outcome with etcd's messages.
pub fn ready() {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    tracing::info!("notifying init daemon");
    match notify("READY=1") {
        Ok(_) => tracing::info!("successfully notified init daemon"),
        Err(e) => tracing::error!(error = %e, "failed to notify systemd for readiness"),
    }
}

/// Tells the service manager the member is stopping (systemd then shows "deactivating").
pub fn stopping() {
    if let Err(e) = notify("STOPPING=1") {
        tracing::warn!(error = %e, "failed to notify systemd of the shutdown");
    }
}

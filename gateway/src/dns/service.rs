//! The resolver as the daemon runs it: started on 100.100.100.100 and fd7a:115c:a1e0::53 (which
//! the daemon puts on its TUN device), fed a new [`DnsView`] on every netmap, and asked by
//! `tailgate dns status|query`.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

use super::os::{OsDns, OsDnsConfig};
use super::query::{self, QueryAnswer};
use super::{default_listen_addrs, DnsServer, DnsView, Resolvers};
use crate::api::DnsStatus;
use crate::control::proto::NetMap;

/// Where new views go (control mode sends one per netmap).
#[derive(Clone)]
pub struct DnsFeed {
    view: Arc<watch::Sender<DnsView>>,
    resolvers: Resolvers,
}

impl DnsFeed {
    /// Sends the view of `nm`; unchanged views are not sent.
    pub fn netmap(&self, nm: &NetMap) {
        let next = DnsView::from_netmap(nm, &self.resolvers);
        self.view.send_if_modified(|v| {
            let changed = *v != next;
            *v = next;
            changed
        });
    }
}

/// The resolver, or why it is not running, and the system's resolver configuration.
pub struct DnsService {
    server: Option<DnsServer>,
    reason: Option<String>,
    view: Arc<watch::Sender<DnsView>>,
    resolvers: Resolvers,
    os: Arc<Mutex<Option<OsDns>>>,
    os_note: Mutex<String>,
}

impl DnsService {
    /// The addresses the daemon must add to its TUN device for the resolver.
    pub fn addresses() -> Vec<ipnet::IpNet> {
        default_listen_addrs()
            .into_iter()
            .map(|a| ipnet::IpNet::from(a.ip()))
            .collect()
    }

    /// Starts the resolver with `initial` (a failure is logged and reported by `status`; the
    /// daemon runs on without MagicDNS). `reason_off`: do not start, for this reason.
    pub fn start(initial: DnsView, resolvers: Resolvers, reason_off: Option<String>) -> DnsService {
        let (tx, rx) = watch::channel(initial);
        let view = Arc::new(tx);
        let (server, reason) = match reason_off {
            Some(r) => (None, Some(r)),
            None => match DnsServer::start(&default_listen_addrs(), rx) {
                Ok(s) => {
                    log::info!("MagicDNS resolver on {:?}", s.local_addrs());
                    (Some(s), None)
                }
                Err(e) => {
                    log::warn!("MagicDNS disabled: {e}");
                    (None, Some(e.to_string()))
                }
            },
        };
        DnsService {
            server,
            reason,
            view,
            resolvers,
            os: Arc::new(Mutex::new(None)),
            os_note: Mutex::new("off".into()),
        }
    }

    /// Points the system at the resolver now and after every view change (a new tailnet
    /// domain or split routes), until [`DnsService::restore_os`]. Must run within tokio.
    pub fn manage_os(&self, os: OsDns, override_local_dns: bool) {
        if self.server.is_none() {
            self.os_off("the resolver does not run".into());
            return;
        }
        *lock(&self.os_note) = os.describe();
        *lock(&self.os) = Some(os);
        let slot = self.os.clone();
        let mut views = self.view.subscribe();
        tokio::spawn(async move {
            let mut applied: Option<OsDnsConfig> = None;
            loop {
                let next = OsDnsConfig::for_view(&views.borrow_and_update(), override_local_dns);
                if applied.as_ref() != Some(&next) {
                    let slot = slot.clone();
                    let cfg = next.clone();
                    let done = tokio::task::spawn_blocking(move || match lock(&slot).as_mut() {
                        Some(os) => os.apply(&cfg),
                        None => Ok(()),
                    })
                    .await;
                    match done {
                        Ok(Ok(())) => log::info!("system DNS points at MagicDNS: {next:?}"),
                        Ok(Err(e)) => log::warn!("configuring the system's DNS: {e:#}"),
                        Err(e) => log::warn!("configuring the system's DNS: {e}"),
                    }
                    applied = Some(next);
                }
                if views.changed().await.is_err() {
                    break;
                }
            }
        });
    }

    /// Records why the system's resolver is left alone (for `tailgate dns status`).
    pub fn os_off(&self, why: String) {
        *lock(&self.os_note) = format!("off: {why}");
    }

    /// Gives the system its own resolver configuration back (on shutdown).
    pub fn restore_os(&self) {
        if let Some(mut os) = lock(&self.os).take() {
            if let Err(e) = os.restore() {
                log::warn!("restoring the system's DNS configuration: {e:#}");
            }
        }
    }

    /// A feed for control mode: every netmap updates the names (kept also when the resolver
    /// does not listen, for the proxies of userspace networking).
    pub fn feed(&self) -> Option<DnsFeed> {
        Some(DnsFeed {
            view: self.view.clone(),
            resolvers: self.resolvers.clone(),
        })
    }

    /// The tailnet's names as they change.
    pub fn names(&self) -> watch::Receiver<DnsView> {
        self.view.subscribe()
    }

    /// `tailgate dns status`.
    pub fn status(&self) -> DnsStatus {
        let v = self.view.borrow();
        let fqdn = |name: &str| {
            if v.domain.is_empty() {
                name.to_string()
            } else {
                format!("{name}.{}", v.domain)
            }
        };
        DnsStatus {
            running: self.server.is_some(),
            reason: self.reason.clone(),
            listen: self
                .server
                .as_ref()
                .map(|s| s.local_addrs().to_vec())
                .unwrap_or_default(),
            domain: v.domain.clone(),
            names: v.hosts().map(|h| fqdn(&h.name)).collect(),
            split: v
                .split
                .iter()
                .map(|r| {
                    let ups: Vec<String> = r.upstreams.iter().map(ToString::to_string).collect();
                    format!("{} → {}", r.suffix, ups.join(", "))
                })
                .collect(),
            global: v.global.iter().map(ToString::to_string).collect(),
            stats: self.server.as_ref().map(DnsServer::stats),
            os: lock(&self.os_note).clone(),
        }
    }

    /// `tailgate dns query`.
    pub async fn query(&self, name: &str, rtype: &str) -> Result<QueryAnswer, String> {
        let server = self
            .server
            .as_ref()
            .ok_or_else(|| format!("MagicDNS is off: {}", self.reason.as_deref().unwrap_or("?")))?;
        query::ask(server.handler(), name, rtype).await
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

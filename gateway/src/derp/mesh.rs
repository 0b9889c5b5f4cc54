//! Mesh links between the relay servers of one region: each server logs in to every other
//! with the region's mesh secret and watches its connections, so that it knows which keys are
//! connected there and can forward their packets (one hop, never further).

use std::time::Duration;

use tokio::task::JoinHandle;

use super::client::{self, ConnectOptions, Received};
use super::server::Server;

/// Wait before the first reconnect; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(250);
/// Longest wait between reconnects.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Keeps a mesh link from `server` to the server `peer` describes, reconnecting with backoff,
/// until the task is aborted.
pub fn spawn_link(server: Server, mut peer: ConnectOptions) -> JoinHandle<()> {
    peer.mesh_key = server.mesh_key().map(str::to_string);
    tokio::spawn(async move {
        let mut backoff = MIN_BACKOFF;
        loop {
            match client::connect(&peer, server.private_key()).await {
                Ok(c) => {
                    backoff = MIN_BACKOFF;
                    let link_id = server.next_link_id();
                    log::info!("relay mesh: linked to {} ({})", peer.host, peer.addr);
                    let queue = c.sender.queue();
                    let mut receiver = c.receiver;
                    if c.sender.watch_conns().await.is_ok() {
                        loop {
                            match receiver.recv().await {
                                Ok(Received::PeerPresent(key)) => {
                                    server.add_mesh_route(key, link_id, queue.clone())
                                }
                                Ok(Received::PeerGone { key, .. }) => {
                                    server.remove_mesh_route(&key, link_id)
                                }
                                Ok(_) => {}
                                Err(e) => {
                                    log::warn!("relay mesh: link to {} lost: {e}", peer.host);
                                    break;
                                }
                            }
                        }
                    }
                    server.remove_mesh_link(link_id);
                }
                Err(e) => log::warn!("relay mesh: {e:#}"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    })
}

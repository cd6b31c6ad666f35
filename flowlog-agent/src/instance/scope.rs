//! The node's interfaces and which ones each flow log covers.
//!
//! [`LinkWatcher`] subscribes to rtnetlink link events (`RTNLGRP_LINK`, through the
//! `rtnetlink` crate: no polling) and dumps the link table after every burst of
//! events; [`members`] resolves an instance's resource against that table. The agent
//! reconciles attachments with the result, so an interface that appears is captured
//! within milliseconds, and one that disappears is released.
use std::collections::BTreeMap;

use futures_util::{FutureExt as _, StreamExt as _, TryStreamExt as _};
use rtnetlink::{
    packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage},
    MulticastGroup,
};

use super::{Resource, VSwitch};

/// One interface of the network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub ifindex: u32,
    pub name: String,
    /// The bridge (or bond...) it is a port of.
    pub master: Option<u32>,
    pub is_bridge: bool,
}

/// The link table: ifindex → link.
pub type Links = BTreeMap<u32, Link>;

#[derive(Debug, thiserror::Error)]
pub enum ScopeError {
    #[error("opening the rtnetlink socket for link events: {0}")]
    Socket(#[source] std::io::Error),
    #[error("dumping the interfaces over rtnetlink: {0}")]
    Dump(#[source] rtnetlink::Error),
}

fn link_of(msg: LinkMessage) -> Option<Link> {
    let mut name = None;
    let mut master = None;
    let mut is_bridge = false;
    for a in msg.attributes {
        match a {
            LinkAttribute::IfName(n) => name = Some(n),
            LinkAttribute::Controller(m) if m != 0 => master = Some(m),
            LinkAttribute::LinkInfo(infos) => {
                is_bridge |= infos
                    .iter()
                    .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Bridge)));
            }
            _ => {}
        }
    }
    Some(Link {
        ifindex: msg.header.index,
        name: name?,
        master,
        is_bridge,
    })
}

/// Link events and dumps of the current network namespace.
pub struct LinkWatcher {
    handle: rtnetlink::Handle,
    events: futures_util::stream::BoxStream<'static, ()>,
    /// An event arrived and no dump followed yet (survives a cancelled [`Self::changed`]).
    dirty: bool,
}

impl LinkWatcher {
    /// Subscribes to link events (spawns the netlink connection on the runtime).
    pub fn start() -> Result<Self, ScopeError> {
        let (conn, handle, events) = rtnetlink::new_multicast_connection(&[MulticastGroup::Link])
            .map_err(ScopeError::Socket)?;
        tokio::spawn(conn);
        Ok(Self {
            handle,
            events: events.map(|_| ()).boxed(),
            dirty: false,
        })
    }

    /// The current link table (and no event is pending any more).
    pub async fn dump(&mut self) -> Result<Links, ScopeError> {
        self.dirty = false;
        let mut out = Links::new();
        let mut s = self.handle.link().get().execute();
        while let Some(msg) = s.try_next().await.map_err(ScopeError::Dump)? {
            if let Some(l) = link_of(msg) {
                out.insert(l.ifindex, l);
            }
        }
        Ok(out)
    }

    /// Waits for the next link event, then swallows the rest of its burst (a veth pair
    /// is several messages), so the caller dumps once. Cancel-safe: an event consumed
    /// by a cancelled call leaves the watcher dirty, and the next call returns at once.
    pub async fn changed(&mut self) {
        if !self.dirty {
            if self.events.next().await.is_none() {
                // The connection ended: never wake again (the agent goes on with what
                // it has).
                std::future::pending::<()>().await;
            }
            self.dirty = true;
        }
        let quiet = tokio::time::sleep(std::time::Duration::from_millis(20));
        tokio::pin!(quiet);
        loop {
            tokio::select! {
                _ = &mut quiet => break,
                m = self.events.next() => if m.is_none() { break },
            }
        }
    }

    /// Whether link events arrived that no dump has followed yet (without waiting).
    pub fn pending(&mut self) -> bool {
        while let Some(Some(())) = self.events.next().now_or_never() {
            self.dirty = true;
        }
        self.dirty
    }
}

/// The interfaces an instance covers now (ifindexes), from the link table.
pub fn members(resource: &Resource, links: &Links) -> Vec<u32> {
    let mut out: Vec<u32> = links
        .values()
        .filter(|l| covers(resource, l, links))
        .map(|l| l.ifindex)
        .collect();
    out.sort_unstable();
    out
}

fn covers(resource: &Resource, l: &Link, links: &Links) -> bool {
    match resource {
        Resource::Eni(names) => names.contains(&l.name),
        Resource::VSwitch(ids) => ids.iter().any(|id| match id {
            VSwitch::Bridge(b) => l
                .master
                .and_then(|m| links.get(&m))
                .is_some_and(|m| m.name == *b && m.is_bridge),
            VSwitch::Glob(p) => l.name != "lo" && p.matches(&l.name),
        }),
        Resource::Vpc(_) => l.name != "lo",
    }
}

/// Whether `name` is an interface of the table.
pub fn exists(links: &Links, name: &str) -> bool {
    links.values().any(|l| l.name == name)
}

/// Whether `name` is a bridge of the table.
pub fn is_bridge(links: &Links, name: &str) -> bool {
    links.values().any(|l| l.name == name && l.is_bridge)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(ifindex: u32, name: &str, master: Option<u32>, is_bridge: bool) -> (u32, Link) {
        (
            ifindex,
            Link {
                ifindex,
                name: name.into(),
                master,
                is_bridge,
            },
        )
    }

    #[test]
    fn resources_resolve_against_the_link_table() {
        let links: Links = [
            link(1, "lo", None, false),
            link(2, "eth0", None, false),
            link(3, "br0", None, true),
            link(4, "veth1", Some(3), false),
            link(5, "veth2", Some(3), false),
            link(6, "veth9", None, false),
            link(7, "bond0", None, false),
            link(8, "eth1", Some(7), false),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            members(&Resource::Eni(vec!["eth0".into(), "gone".into()]), &links),
            [2]
        );
        assert_eq!(
            members(
                &Resource::VSwitch(vec![VSwitch::Bridge("br0".into())]),
                &links
            ),
            [4, 5]
        );
        // A port of something that is not a bridge is not a vSwitch port.
        assert!(members(
            &Resource::VSwitch(vec![VSwitch::Bridge("bond0".into())]),
            &links
        )
        .is_empty());
        assert_eq!(
            members(
                &Resource::VSwitch(vec![VSwitch::Glob(glob::Pattern::new("veth*").unwrap())]),
                &links
            ),
            [4, 5, 6]
        );
        assert_eq!(members(&Resource::Vpc(None), &links), [2, 3, 4, 5, 6, 7, 8]);
        assert!(is_bridge(&links, "br0") && !is_bridge(&links, "eth0"));
        assert!(exists(&links, "veth9") && !exists(&links, "x"));
    }
}
